"""Model layer. Importing it registers the tiny model's EfficientNet-Lite0 vision tower with
`AutoConfig`/`AutoModel`, so any saved tiny VLM folder loads with `from_pretrained(local_dir)`."""
from qsft_robot.models import efficientnet_tower  # noqa: F401  (registration side effect)
