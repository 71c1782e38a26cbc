"""lcc's model side: the ``lcc_compressed`` model and the compression methods it applies.

    lm_eval --model lcc_compressed --model_args pretrained=...,w_bits=3 --tasks wikitext_kl_32k

Importing this package stays cheap: the model class lives in ``lcc_models.compressed_lm``
and pulls in torch and transformers only when imported.
"""
