# CIFAR-10 on Snakemake: prepare the dataset -> train -> export ONNX -> serving image -> evaluate
# the served model -> register. Config: config/config.yaml (schema: config/schema.yaml).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/settings.smk"
include: "rules/targets.smk"
include: "rules/data.smk"
include: "rules/audit.smk"
include: "rules/train.smk"
include: "rules/sweep.smk"
include: "rules/halving.smk"
include: "rules/export.smk"
include: "rules/robustness.smk"
include: "rules/serve.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets,
        promoted_targets,
