"""The concepts of examples/train_with_trainer.py, a module each, which the script runs in order: `arguments` (the
command line: `WeCLIPArguments` and `TrainingArguments` with the recipe's defaults, the phases --do_train / --do_eval
ask for), `resume` (the checkpoint a run continues from, and what a resume must repeat), `data` (the data source, its
labels, the validation split as scored), `evaluation` (what is scored; --do_eval alone scoring a saved model) and
`run_end` (what a trained run saves, writes and says at its end). The script imports them from its own folder, which
Python puts first on sys.path (as train.py its `training`); the weclip_hf package, installed without examples/, does
not need them.
"""
