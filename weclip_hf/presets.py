"""Dataset presets: the prompt class names and background words WeCLIP uses (DESIGN Part 1).

These lists are data, not code: they become ``WeCLIPConfig.class_names`` / ``background_names``.
The prompt names are the ones the official code encodes (CLIP-ES style enriched names, typos kept,
e.g. ``"sknowboard"``); ``*_LABELS`` are the plain names shown to users in ``id2label``.
"""

from __future__ import annotations

VOC_PROMPT_NAMES = [
    "aeroplane", "bicycle", "bird avian", "boat", "bottle", "bus", "car", "cat", "chair seat", "cow",
    "diningtable", "dog", "horse", "motorbike", "person with clothes,people,human", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor screen",
]  # fmt: skip
VOC_LABELS = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip
VOC_BACKGROUND_NAMES = [
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea",
    "railway", "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock",
    "street", "valley", "bridge", "sign",
]  # fmt: skip

COCO_PROMPT_NAMES = [
    "person with clothes,people,human", "bicycle", "car", "motorbike", "aeroplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench",
    "bird avian", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "backpack,bag", "umbrella,parasol", "handbag,purse", "necktie", "suitcase", "frisbee", "skis",
    "sknowboard", "sports ball", "kite", "baseball bat", "glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "dessertspoon", "bowl", "banana",
    "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair seat", "sofa", "pottedplant", "bed", "diningtable", "toilet", "tvmonitor screen", "laptop",
    "mouse", "remote control", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hairdrier,blowdrier",
    "toothbrush",
]  # fmt: skip
COCO_LABELS = [
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "sofa", "pottedplant", "bed", "diningtable", "toilet",
    "tvmonitor", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster",
    "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
]  # fmt: skip
COCO_BACKGROUND_NAMES = [
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea",
    "railway", "railroad", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street",
    "valley", "bridge",
]  # fmt: skip

PRESETS: dict[str, dict] = {
    "voc": {
        "class_names": VOC_PROMPT_NAMES,
        "label_names": VOC_LABELS,
        "background_names": VOC_BACKGROUND_NAMES,
        "cam_box_threshold": 0.4,
        "rfm_num_maps": 6,
        # The official counter also counted validation forwards: RFM really started at training
        # iteration ~9,145 of the 30k VOC run (DESIGN Part 1, RFM). The config default stays 15,000.
        "rfm_start_step": 9145,
    },
    "coco": {
        "class_names": COCO_PROMPT_NAMES,
        "label_names": COCO_LABELS,
        "background_names": COCO_BACKGROUND_NAMES,
        "cam_box_threshold": 0.7,
        "rfm_num_maps": 10,
        "rfm_start_step": 40000,
    },
}


def preset_config_kwargs(name: str) -> dict:
    """Config keyword arguments of a dataset preset (``"voc"`` or ``"coco"``)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS)}.")
    return {k: list(v) if isinstance(v, list) else v for k, v in PRESETS[name].items()}
