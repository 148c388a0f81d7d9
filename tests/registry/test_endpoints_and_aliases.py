"""The registry side of deploy semantics, without a model: traffic shares always sum to 100,
aliases follow their grammar and survive deletions sensibly, and the deploy policy compares
only versions evaluated on the same held-out data."""

import pytest

from tunelab.jobs.deploy_policy import decide
from tunelab.registry.aliases import InvalidAlias, remove_alias, set_alias
from tunelab.registry.endpoints import (
    deploy_version,
    deployments,
    endpoint_id_for,
    is_deployed,
    undeploy,
)
from tunelab.registry.models import delete_version, get_version, register_version


def _register(services, name="router", metrics=None, method="sft"):
    return register_version(
        services.db,
        name=name,
        method=method,
        base_model="smollm2-135m-instruct",
        adapter_uri=f"adapters/{name}",
        adapter_sha256="0" * 64,
        adapter_size=1,
        config={},
        data_stats=None,
        metrics=metrics,
        source_job_id=None,
    )


def _shares(services, name="router"):
    return {
        d.version.version: d.traffic_percentage
        for d in deployments(services.db, endpoint_id_for(name))
    }


def test_traffic_shares_always_sum_to_100(services):
    v1, v2, v3 = (_register(services) for _ in range(3))
    deploy_version(services.db, v1.id, traffic_percentage=40)  # the only one: it takes all
    assert _shares(services) == {1: 100}
    deploy_version(services.db, v2.id, traffic_percentage=33)
    deploy_version(services.db, v3.id, traffic_percentage=33)
    shares = _shares(services)
    assert sum(shares.values()) == 100 and shares[3] == 33 and shares[1] > shares[2] > 0
    undeploy(services.db, endpoint_id_for("router"), v3.id)
    assert sum(_shares(services).values()) == 100 and set(_shares(services)) == {1, 2}
    deploy_version(services.db, v3.id)  # all the traffic; the others stay deployed
    assert _shares(services) == {1: 0, 2: 0, 3: 100}
    undeploy(services.db, endpoint_id_for("router"), v3.id)  # the newest left takes it all
    assert _shares(services) == {1: 0, 2: 100}
    # Deleting a deployed version hands its traffic on too.
    delete_version(services.db, services.artifacts, "router", 2)
    assert _shares(services) == {1: 100} and not is_deployed(services.db, v2.id)


def test_aliases_grammar_default_and_deletion(services):
    v1, v2 = _register(services), _register(services)
    assert get_version(services.db, "router").id == v1.id  # the first version is the default
    set_alias(services.db, "router", 2, "prod")
    assert get_version(services.db, "router@prod").id == v2.id
    for bad in ("Prod", "1", "checkpoint-20", "a b", "x" * 65, "-x"):
        with pytest.raises(InvalidAlias):
            set_alias(services.db, "router", 1, bad)
    with pytest.raises(InvalidAlias, match="cannot be removed"):
        remove_alias(services.db, "router", "default")
    with pytest.raises(LookupError):
        remove_alias(services.db, "router", "staging")
    # Deleting the default version: `router` means the latest version left; its aliases go.
    set_alias(services.db, "router", 1, "old")
    delete_version(services.db, services.artifacts, "router", 1)
    assert get_version(services.db, "router").id == v2.id
    with pytest.raises(LookupError, match="no alias 'old'"):
        get_version(services.db, "router@old")


def test_if_better_compares_only_on_the_same_held_out_data(services, monkeypatch):
    from tunelab.jobs import deploy_policy

    deployed = _register(services, metrics={"best_eval_loss": 1.0})
    deploy_version(services.db, deployed.id)
    monkeypatch.setattr(deploy_policy, "_job_datasets", lambda db, v: {"validation": "ds-val"})
    same = {"validation": "ds-val"}
    better = _register(services, metrics={"best_eval_loss": 0.9})
    equal = _register(services, metrics={"best_eval_loss": 1.0})
    worse = _register(services, metrics={"best_eval_loss": 1.1})
    assert decide(services.db, "if_better", better, same).deploy
    assert decide(services.db, "if_better", equal, same).deploy  # "at least as well"
    refused = decide(services.db, "if_better", worse, same)
    assert not refused.deploy and "1.1 vs 1 of router@1: worse" in refused.reason
    other = decide(services.db, "if_better", better, {"validation": "ds-other"})
    assert not other.deploy and "same held-out data" in other.reason
    none = decide(services.db, "if_better", _register(services), {})
    assert not none.deploy and "no held-out" in none.reason
    assert decide(services.db, "always", worse, same).deploy
    assert not decide(services.db, "never", better, same).deploy
    rlhf = decide(services.db, "if_better", _register(services, method="rlhf"), same)
    assert not rlhf.deploy and "no comparable evaluation" in rlhf.reason
    first = _register(services, name="fresh")
    assert (
        decide(services.db, "if_better", first, {}).reason == "nothing was deployed on the endpoint"
    )
