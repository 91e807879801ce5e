import torch

from weclip_hf.inference import image_pseudo_labels, pad_to_patch


@torch.no_grad()
def test_image_pseudo_labels_match_the_model_and_crop_padded_tiny_images(tiny_model):
    torch.manual_seed(0)
    class_labels = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    pixel_values = torch.randn(1, 3, 32, 24)
    labels, cams = image_pseudo_labels(tiny_model, pixel_values, class_labels, use_rfm=True)
    out = tiny_model(pixel_values=pixel_values, class_labels=class_labels, use_rfm=True)
    assert torch.equal(labels, out.pseudo_labels) and torch.equal(cams, out.cams)
    tiny = torch.randn(1, 3, 5, 6)  # below one 8 px patch: padded, then cropped back
    labels, cams = image_pseudo_labels(tiny_model, tiny, class_labels, use_rfm=False)
    padded = tiny_model(pixel_values=pad_to_patch(tiny, 8), class_labels=class_labels, use_rfm=False)
    assert labels.shape == (1, 5, 6) and torch.equal(labels, padded.pseudo_labels[:, :5, :6])
    assert torch.equal(cams, padded.cams)
