"""The method table is the only registry of tuning methods: each entry's config, pipeline and
recipes fit together, the worker and submit take the pipeline from it, and reading it (the
CLI's --help, the API's listing) imports no pipeline, database or torch code."""

import importlib
import subprocess
import sys

import pytest

from tunelab.jobs.methods import METHODS, UnknownMethod, method_spec, pipeline_for


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_s_config_pipeline_and_recipes_fit_together(name):
    spec = METHODS[name]
    assert spec.config.model_fields["method"].default == name  # the stored job says its method
    pipeline = pipeline_for(name)
    assert pipeline is importlib.import_module(spec.pipeline).PIPELINE
    assert pipeline.method == name
    assert pipeline.step_names[0] == "validate" and pipeline.step_names[-2:] == [
        "register",
        "deploy",
    ]
    assert set(pipeline.weights) == set(pipeline.step_names)
    assert abs(sum(pipeline.weights.values()) - 1) < 1e-9
    roles = [r.name for r in spec.dataset_roles]
    assert len(roles) == len(set(roles)) and any(r.required for r in spec.dataset_roles)
    for recipe in spec.recipes:
        assert importlib.import_module(recipe).__doc__


def test_an_unknown_method_is_refused_with_the_known_ones():
    with pytest.raises(UnknownMethod, match="unknown tuning method 'nope' \\(known: dpo, "):
        method_spec("nope")


def test_reading_the_table_imports_no_pipeline_database_or_torch():
    code = (
        "import sys, tunelab.cli, tunelab.jobs.methods; "
        "heavy = [m for m in sys.modules if m in ('torch', 'transformers', 'sqlalchemy') "
        "or m.endswith('_pipeline') or m.startswith('tunelab.recipes')]; "
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_each_dataset_role_is_checked_as_a_kind_the_server_validates():
    """The Studio checks each role's file before submitting as the table's ``kind`` says: a
    kind of GET /v1/datasets/{id}/validation, or one of the files GET /v1/embeddingData/
    validation checks together (by the role's name)."""
    import inspect

    from tunelab.api.routes.datasets import KINDS
    from tunelab.api.routes.embedding_data import validate as validate_together

    together = set(inspect.signature(validate_together).parameters)
    for name, spec in METHODS.items():
        for role in spec.dataset_roles:
            if role.kind in ("corpus", "queries", "labels"):
                assert role.name in together, (name, role.name)
            else:
                assert role.kind in KINDS, (name, role.name, role.kind)
