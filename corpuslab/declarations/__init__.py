"""Experiment declarations: YAML under ``experiments/`` parsed into typed, cross-checked models.

The package: ``models`` (one strict model per section, and the ``Experiment``), ``load`` (the
folder read and cross-checked), ``yamlfile`` (strict YAML) and ``paths`` (the path policy and
the errors); everything a caller needs is importable from here.

Every ``*.yaml`` file in the folder may declare any of ``sources``, ``recipes``, ``mixtures``,
``runs``, ``evals`` (evaluation suites) and ``studies`` (comparisons of runs); names are global
across files. A bad declaration fails at load time with the file,
the key path and the allowed values, before Dagster ever builds an asset.

YAML is read strictly (:func:`read_yaml`): a key repeated in one mapping is an error, not a
silent overwrite; alias expansion is bounded (:data:`MAX_YAML_NODES`) so a "billion laughs"
file fails at once; nesting deeper than :data:`MAX_YAML_DEPTH` and bytes that are not UTF-8
are clear errors.

Paths (:func:`resolve_path`, the README's "Paths in declarations"): ``~`` and ``$VAR`` /
``${VAR}`` are expanded (an undefined variable is an error); an absolute path is used as is;
a relative path is under the one base folder, ``$CORPUSLAB_HOME``, and may use ``..`` only
while it stays inside it. Source ``path`` may also be an ``s3://`` URL; ``deepspeed`` is a
bare name of ``infra/deepspeed/<name>.json`` or a path to a ``.json`` file.
"""

from corpuslab.declarations.load import (
    load_experiment,
)
from corpuslab.declarations.models import (
    STRATEGIES,
    DecontaminationDecl,
    DoReMiDecl,
    EvalDecl,
    Experiment,
    HeldoutDecl,
    InheritDecl,
    MixtureDecl,
    RecipeDecl,
    RunDecl,
    SourceDecl,
    SourceStorage,
    StudyDecl,
    SuiteDecl,
    TokenizerDecl,
    TrainingDecl,
)
from corpuslab.declarations.paths import (
    DEEPSPEED_DIR,
    EXPERIMENTS_ENV,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    REPO_ROOT,
    SECTIONS,
    DeclarationError,
    default_experiments_dir,
    default_home,
    expand_vars,
    resolve_path,
)
from corpuslab.declarations.yamlfile import (
    read_yaml,
)

__all__ = [
    "DEEPSPEED_DIR",
    "DeclarationError",
    "DecontaminationDecl",
    "DoReMiDecl",
    "EXPERIMENTS_ENV",
    "EvalDecl",
    "Experiment",
    "HeldoutDecl",
    "InheritDecl",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "MixtureDecl",
    "REPO_ROOT",
    "RecipeDecl",
    "RunDecl",
    "SECTIONS",
    "STRATEGIES",
    "SourceDecl",
    "SourceStorage",
    "StudyDecl",
    "SuiteDecl",
    "TokenizerDecl",
    "TrainingDecl",
    "default_experiments_dir",
    "default_home",
    "expand_vars",
    "load_experiment",
    "read_yaml",
    "resolve_path",
]
