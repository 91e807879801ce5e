"""The concepts of examples/generate_pseudo_labels.py, a module each, which the script runs in order: `arguments`
(the command line and its checks), `data` (the splits read, a row's record of its input, the images as the model
reads them), `model` (a trained WeCLIP or a bare CLIP, the pseudo masks of a group of images), `resuming` (what a
re-run still has to do in an earlier run's folder), `writing` (an example's image, mask, record and overlay),
`finishing` (the splits' metadata, the report, the dataset saved or pushed) and `starting_over` (an earlier run of
other settings removed); `output_folder` is the layout of the folder they write. The script imports them from its
own folder, which Python puts first on sys.path (as train.py its `training`); the weclip_hf package, installed
without examples/, does not need them.
"""
