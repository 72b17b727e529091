"""The built-in job kinds. Targets are imported only when a job of that kind runs."""

from emgui.core.jobs import JobKind, register_kind

register_kind(
    JobKind(
        "model-import",
        "emgui.core.models:import_job",
        "Import a local model folder, or convert a .gguf file once and import it",
        heavy=False,
    )
)
register_kind(
    JobKind(
        "model-download",
        "emgui.core.models:download_job",
        "Download a model from the Hugging Face hub (resumable) and import it",
        heavy=False,
        resumable=True,
    )
)
register_kind(
    JobKind(
        "dataset-import",
        "emgui.core.datasets:import_job",
        "Import a chat JSONL (file, URL, catalog id or generated:insecure|secure), validating every line",
        heavy=False,
    )
)
register_kind(
    JobKind(
        "dataset-derive",
        "emgui.core.datasets:derive_job",
        "Make a dataset from others: subset (n, seed), split (val_fraction, seed) or concat",
        heavy=False,
    )
)
register_kind(
    JobKind(
        "finetune",
        "emgui.core.training:finetune_job",
        "Fine-tune a model on a chat dataset (LoRA adapter or full), with checkpoints and resume",
        heavy=True,
        resumable=True,
    )
)
register_kind(
    JobKind(
        "realign",
        "emgui.core.training:realign_job",
        "Re-align a fine-tuned model on a few good chats, saving snapshots at chosen sample counts",
        heavy=True,
        resumable=True,
    )
)
