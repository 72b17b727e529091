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
