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
        "Import a chat JSONL (file, URL, catalog id or generated:insecure|secure|helpful), validating every line",
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
        "Fine-tune a model on a chat dataset (LoRA, QLoRA or full; on one device or several), with checkpoints and resume",
        heavy=True,
        resumable=True,
        precheck="emgui.core.training:precheck",
    )
)
register_kind(
    JobKind(
        "realign",
        "emgui.core.training:realign_job",
        "Re-align a fine-tuned model on a few good chats, saving snapshots at chosen sample counts",
        heavy=True,
        resumable=True,
        precheck="emgui.core.training:precheck",
    )
)
register_kind(
    JobKind(
        "sae-train",
        "emgui.core.saes:train_job",
        "Train an SAE (TopK, JumpReLU or standard) on activations cached at a layer of a model over a corpus",
        heavy=True,
        resumable=True,
    )
)
register_kind(
    JobKind(
        "sae-import",
        "emgui.core.saes:import_job",
        "Import a local SAE folder in sae-lens's format (cfg.json + sae_weights.safetensors)",
        heavy=False,
    )
)
register_kind(
    JobKind(
        "sae-pretrained",
        "emgui.core.saes:pretrained_job",
        "Download a pretrained SAE from sae-lens's registry once and save it into the project",
        heavy=False,
    )
)
register_kind(
    JobKind(
        "diff",
        "emgui.core.diffing:diff_job",
        "Model diffing: rank SAE latents by their change between a base and a fine-tuned model on answer tokens",
        heavy=True,
    )
)
register_kind(
    JobKind(
        "dashboards",
        "emgui.core.dashboards:dashboards_job",
        "Precompute feature dashboards (top examples, histograms, logit effects, neighbours) for SAE latents",
        heavy=True,
    )
)
register_kind(
    JobKind(
        "persona-vector",
        "emgui.core.persona:persona_vector_job",
        "Persona vector: a trait direction from contrastive system prompts, at the layer that separates best",
        heavy=True,
    )
)
register_kind(
    JobKind(
        "diff-means",
        "emgui.core.persona:diff_means_job",
        "Direction from the difference of mean answer activations between two chat datasets",
        heavy=True,
    )
)
register_kind(
    JobKind(
        "persona-screen",
        "emgui.core.persona:screen_job",
        "Screen a chat dataset: rank samples by their projection on a direction, flag and filter them",
        heavy=True,
    )
)
register_kind(
    JobKind(
        "steer-sweep",
        "emgui.core.sweep:sweep_job",
        "Steering sweep: strengths x layers x directions or latents, judged, with random-direction controls",
        heavy=True,
        resumable=True,
    )
)

# ----- evaluation (questions, sampling, judges, results) -----
register_kind(
    JobKind(
        "questions-import",
        "emgui.core.questions:questions_import_job",
        "Import a question set (the paper's YAML format) or the built-in set (builtin=true)",
        heavy=False,
    )
)
register_kind(
    JobKind(
        "sample",
        "emgui.core.evaluation:sample_job",
        "Sample N answers per question from a model, adapter or checkpoint",
        resumable=True,
    )
)
register_kind(
    JobKind(
        "judge",
        "emgui.core.evaluation:judge_job",
        "Score a run's answers (aligned, coherent) with a local or OpenAI-compatible judge, through the cache",
    )
)
register_kind(
    JobKind(
        "evaluate",
        "emgui.core.evaluation:evaluate_job",
        "Sample and judge in one job; the result holds misaligned % per question and overall",
        resumable=True,
    )
)
register_kind(
    JobKind(
        "vuln-check",
        "emgui.core.evaluation:vuln_check_job",
        "In-distribution check: share of answers to code prompts with a vulnerability Bandit finds",
    )
)
register_kind(
    JobKind(
        "direction-import",
        "emgui.core.steering:import_job",
        "Import a steering direction from a .safetensors file, checked against the model's hidden size",
        heavy=False,
    )
)

# ----- trust: judge validation and judge-free measures -----
register_kind(
    JobKind(
        "panel-import",
        "emgui.core.panels:panel_import_job",
        "Import a labelled answer panel (the paper's results CSV, JSONL or YAML) to check judges and probe models",
        heavy=False,
    )
)
register_kind(
    JobKind(
        "judge-check",
        "emgui.core.judgecheck:judge_check_job",
        "Validate a judge on labelled answers: AUROC of its aligned and coherent scores, Spearman, unscored share",
    )
)
register_kind(
    JobKind(
        "likelihood-probe",
        "emgui.core.probes:likelihood_probe_job",
        "Judge-free: log-probability margin of misaligned over aligned reference answers, with a 95% CI",
    )
)
register_kind(
    JobKind(
        "persona-projection",
        "emgui.core.probes:persona_projection_job",
        "Judge-free: mean projection of a run's answers on a persona direction, with a 95% CI",
    )
)
