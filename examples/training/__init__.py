"""The phases of examples/train.py, a module each, which the script runs in order: `arguments` (the command
line), `data_and_model` (the data sets, the model, its processor and tokenizer), `computation` (torch.compile, the
`Computation` checkpoints record, data-loader workers), `loop` (the training DataLoader, one step, the log),
`evaluation` (during and after the training), `model_card` and `run_end` (what the run saves, writes and says at
its end). The script imports them from its own folder, which Python puts first on sys.path (as benchmark.py its
`benchmarking`); the weclip_hf package, installed without examples/, does not need them.
"""
