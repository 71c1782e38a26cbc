"""lcc's task side: positional KL tasks for lm-evaluation-harness and the KL computation.

Importing this package stays cheap, because the start-up hook imports
``lcc_tasks.harness_hooks`` whenever lm_eval starts.
"""
