"""cluster/: the team setup files.

Every file parses; the Ray launcher config passes Ray's own config validation (what `ray up`
runs before it talks to AWS); images and versions agree with the Ray and MLflow installed
here; the RayJob's entrypoint names a script and a preset that exist; the runtime envs are
ones Ray accepts; the compose file keeps its ports on 127.0.0.1 by default; and no file holds
a secret. No network, no docker, no cluster.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO


CLUSTER = REPO / "cluster"
EXPERIMENTS = REPO / "experiments"

LAUNCHER = CLUSTER / "ray-cluster.yaml"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
COMPOSE = CLUSTER / "mlflow-compose.yaml"
ENV_EXAMPLE = CLUSTER / "mlflow.env.example"

# RayJobSpec's fields (KubeRay ray.io/v1, ray-operator/apis/ray/v1/rayjob_types.go)
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
    "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
    "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule",
}
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)


def load(path: Path):
    return yaml.safe_load(path.read_text())


def ray_version() -> str:
    import ray

    return ray.__version__


def image_tag(image: str) -> tuple[str, str]:
    repo, _, tag = image.rpartition(":")
    return repo, tag


# --------------------------------------------------------------------------- secrets scan


_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
# scheme://user:password@host with a literal password
_URI_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/:@]+:([^\s@/]+)@", re.I)
# KEY=value / key: value / --key=value where the key's name says it holds a secret
_ASSIGNMENT = re.compile(
    r"""(?P<key>[A-Za-z0-9_.-]*(?:password|passwd|secret|token|access[_-]?key|private[_-]?key)[A-Za-z0-9_.-]*)
        ["']?[ \t]*(?:=|:(?=[ \t]|$))[ \t]*(?P<value>[^\n#]*)""",
    re.I | re.X | re.M,
)


def _is_reference(value: str) -> bool:
    """A value that only names where the secret comes from: $VAR, ${VAR}, ${VAR:?msg}
    (no default), or nothing at all (a YAML mapping follows on the next lines)."""
    value = value.strip().strip("\"'").strip()
    if not value:
        return True
    m = re.fullmatch(r"\$\{(\w+)(?P<op>:?[-?+=])?(?P<arg>[^}]*)\}.*", value)
    if m:  # ${VAR:-literal} would ship the literal as the secret
        return not (m.group("op") in (":-", "-", ":=", "=") and m.group("arg"))
    return bool(re.fullmatch(r"\$\w+.*", value))


def scan_for_secrets(text: str) -> list[str]:
    """What in `text` looks like a secret written into a file: AWS access key ids, private
    keys, passwords inside URIs, and literal values given to secret-named keys."""
    found = [f"AWS access key id {m.group(0)[:4]}..." for m in _AWS_KEY_ID.finditer(text)]
    found += ["private key block" for _ in _PRIVATE_KEY.finditer(text)]
    for m in _URI_PASSWORD.finditer(text):
        if not _is_reference(m.group(1)):
            found.append(f"password in URI {m.group(0)[:40]!r}")
    for m in _ASSIGNMENT.finditer(text):
        key, value = m.group("key"), m.group("value")
        if key.lower().endswith("ref") or value.strip().startswith("{"):  # secretKeyRef: {...}
            continue
        if not _is_reference(value):
            found.append(f"literal value for {key}")
    return found


def cluster_files() -> list[Path]:
    """Every file in cluster/ that could be committed (tracked, or untracked and not
    git-ignored): a team host's own cluster/.env is ignored, and rightly holds secrets."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", "cluster"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return sorted({REPO / line for line in out.stdout.splitlines() if (REPO / line).is_file()})


def test_cluster_has_the_team_files():
    names = {p.name for p in cluster_files()}
    assert {"ray-cluster.yaml", "kuberay-rayjob.yaml", "runtime_env.yaml", "mlflow-compose.yaml",
            "mlflow.env.example", "README.md"} <= names


@pytest.mark.parametrize("path", [p for p in cluster_files() if not p.name.endswith(".example")], ids=lambda p: p.name)
def test_no_secrets_in_cluster_files(path):
    text = path.read_text()
    assert scan_for_secrets(text) == [], f"{path.name} holds what looks like a secret"
    if path == RAYJOB:  # the runtime env is a string inside the manifest: scan it as written
        assert scan_for_secrets(load(path)["spec"]["runtimeEnvYAML"]) == []


@pytest.mark.parametrize(
    "text",
    [
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "key: ASIAABCDEFGHIJKLMNOP\n",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----",
        "POSTGRES_PASSWORD=hunter2",
        "password: hunter2",
        '      MINIO_ROOT_PASSWORD: "hunter2hunter2"',
        "MINIO_ROOT_PASSWORD: ${MINIO_ROOT_PASSWORD:-hunter2hunter2}",
        "AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "--backend-store-uri postgresql://mlflow:hunter2@postgres:5432/mlflow",
        "--from-literal=secret-access-key=wJalrXUtnFEMI",
        "HF_TOKEN=hf_abcdefghijklmnop",
    ],
)
def test_secret_scan_catches_a_planted_secret(text):
    assert scan_for_secrets(text), f"not caught: {text!r}"


@pytest.mark.parametrize(
    "text",
    [
        "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it in cluster/.env}",
        "postgresql://mlflow:${POSTGRES_PASSWORD:?set it}@postgres:5432/mlflow",
        '--from-literal=secret-access-key="$AWS_SECRET_ACCESS_KEY"',
        "secretKeyRef: {name: drifting-s3, key: secret-access-key}",
        "AWS_SECRET_ACCESS_KEY:\n  valueFrom:",
        "ray get-auth-token --generate",
    ],
)
def test_secret_scan_lets_references_through(text):
    assert scan_for_secrets(text) == []


def test_env_example_is_the_only_place_for_placeholder_passwords():
    # the scanner does flag the example's `PASSWORD=change-me` lines: it is exempt on purpose
    assert scan_for_secrets(ENV_EXAMPLE.read_text())
    # ... and the real env file next to it can never be committed
    for name in (".env", "mlflow.env"):
        out = subprocess.run(["git", "check-ignore", "-q", f"cluster/{name}"], cwd=REPO)
        assert out.returncode == 0, f"cluster/{name} is not git-ignored"
    out = subprocess.run(["git", "check-ignore", "-q", "cluster/mlflow.env.example"], cwd=REPO)
    assert out.returncode == 1, "cluster/mlflow.env.example must stay tracked"


def test_env_example_names_every_required_compose_variable():
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"\w+=", line)}
    assert required and required <= example, f"missing in {ENV_EXAMPLE.name}: {sorted(required - example)}"


# --------------------------------------------------------------------------- every YAML


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.y*ml")), ids=lambda p: p.name)
def test_yaml_files_load(path):
    assert isinstance(load(path), dict)


# --------------------------------------------------------------------------- ray up config


def _prepared_launcher(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))  # as `ray up` does, before any AWS call
    validate_config(prepared)  # Ray's ray-schema.json and its consistency checks
    return prepared


def test_launcher_config_passes_rays_validation():
    config = load(LAUNCHER)
    prepared = _prepared_launcher(config)
    assert prepared["provider"]["type"] == "aws"
    # the validation is live: the same file with a misspelt key is refused
    bad = copy.deepcopy(config)
    bad["available_node_types"][config["head_node_type"]]["min_worker"] = 0
    with pytest.raises(Exception, match="min_worker"):
        _prepared_launcher(bad)


def test_launcher_has_cpu_head_and_gpu_workers():
    config = load(LAUNCHER)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head.get("resources", {}).get("GPU"), "the head node type should be a CPU one"
    gpu_types = {n: t for n, t in types.items() if n != config["head_node_type"] and t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_types, "no worker node type declares GPU resources"
    assert any(t.get("max_workers", 0) >= 1 for t in gpu_types.values())
    assert all(t.get("resources", {}).get("CPU", 0) >= 1 for t in gpu_types.values())
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]


def test_launcher_images_are_the_installed_ray():
    config = load(LAUNCHER)
    docker = config["docker"]
    images = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    images += [t["docker"][k] for t in config["available_node_types"].values() for k in ("head_image", "worker_image") if k in t.get("docker", {})]
    assert images
    for image in images:
        repo, tag = image_tag(image)
        assert repo == "rayproject/ray"
        assert tag.split("-")[0] == ray_version(), f"{image}: the cluster's Ray must be the client's {ray_version()}"
        assert re.fullmatch(r"[\d.]+-py3\d+(-gpu|-cu\d+)?", tag), tag
    assert any(image_tag(i)[1].endswith("-gpu") or "-cu" in image_tag(i)[1] for i in images), "GPU workers need a CUDA image"


def test_launcher_installs_this_repo_and_keeps_the_dashboard_local():
    config = load(LAUNCHER)
    remote = [r for r, local in config["file_mounts"].items() if local in (".", "./")]
    assert remote, "file_mounts should sync the repository root (ray up runs from it)"
    setup = " ".join(config.get("setup_commands", []))
    assert any(re.search(rf"pip install (-e )?{re.escape(r)}\b", setup) for r in remote), setup
    for pattern in (".venv", ".git"):
        assert pattern in config["rsync_exclude"]
    head = " ".join(config["head_start_ray_commands"])
    assert "--head" in head and "--port=6379" in head
    assert "--dashboard-host=127.0.0.1" in head
    worker = " ".join(config["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in worker
    uris = re.findall(r"MLFLOW_TRACKING_URI=(\S+)", " ".join(config["docker"].get("run_options", [])))
    assert uris and all(re.fullmatch(r"https?://[^@\s]+", u) for u in uris), uris  # no user:pass@


# --------------------------------------------------------------------------- KubeRay RayJob


def rayjob() -> dict:
    return load(RAYJOB)


def containers(job: dict) -> list[tuple[str, dict]]:
    cluster = job["spec"]["rayClusterSpec"]
    out = [("head", c) for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    for group in cluster.get("workerGroupSpecs", []):
        out += [(group["groupName"], c) for c in group["template"]["spec"]["containers"]]
    if "submitterPodTemplate" in job["spec"]:
        out += [("submitter", c) for c in job["spec"]["submitterPodTemplate"]["spec"]["containers"]]
    return out


def test_rayjob_kind_version_and_lifecycle():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, f"unknown RayJobSpec fields: {sorted(set(spec) - RAYJOB_SPEC_FIELDS)}"
    assert spec["rayClusterSpec"]["rayVersion"] == ray_version()
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    for where, c in containers(job):
        repo, tag = image_tag(c["image"])
        assert repo == "rayproject/ray" and tag.split("-")[0] == ray_version(), f"{where}: {c['image']}"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == f"rayproject/ray:{ray_version()}-py311"


def test_rayjob_has_a_gpu_worker_group():
    job = rayjob()
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu = [g for g in groups for c in g["template"]["spec"]["containers"]
           if int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1]
    assert gpu, "no worker group asks for nvidia.com/gpu"
    for g in gpu:
        assert g["replicas"] >= 1 and g.get("minReplicas", 0) <= g["replicas"] <= g.get("maxReplicas", g["replicas"])
        assert all(c["image"].endswith("-gpu") for c in g["template"]["spec"]["containers"])


def _secret_env_violations(job: dict) -> list[str]:
    bad = []
    for where, c in containers(job):
        for env in c.get("env", []):
            if SECRET_NAME.search(env["name"]):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if "value" in env or not (ref and ref.get("name") and ref.get("key")):
                    bad.append(f"{where}: {env['name']}")
        if c.get("envFrom"):
            bad += [f"{where}: envFrom {e}" for e in c["envFrom"] if "secretRef" not in e]
    env_vars = yaml.safe_load(job["spec"].get("runtimeEnvYAML", "")).get("env_vars", {})
    bad += [f"runtimeEnvYAML: {k}" for k in env_vars if SECRET_NAME.search(k)]
    return bad


def test_rayjob_credentials_only_from_secrets():
    job = rayjob()
    assert _secret_env_violations(job) == []
    names = {e["name"] for _, c in containers(job) for e in c.get("env", [])}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names
    # and the check is live: a literal key in a worker is refused
    bad = copy.deepcopy(job)
    worker = bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "not-a-ref"})
    assert _secret_env_violations(bad)


def _entrypoint(job: dict) -> tuple[Path, str]:
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python"
    script = REPO / argv[1]
    assert script.parent == EXPERIMENTS and script.is_file(), f"{argv[1]} is not a script in experiments/"
    assert "--preset" in argv, argv
    return script, argv[argv.index("--preset") + 1]


def _sweep_file(script: Path) -> Path:
    m = re.search(r"""^SWEEP\s*=.*["'](?P<name>[\w.-]+\.yaml)["']""", script.read_text(), re.M)
    assert m, f"{script.name}: no SWEEP = ... 'file.yaml'"
    return EXPERIMENTS / m.group("name")


def test_rayjob_entrypoint_is_a_real_script_and_preset(capsys):
    from drifting_platform.launch.spec import load_sweep

    script, preset = _entrypoint(rayjob())
    module_spec = importlib.util.spec_from_file_location(f"_entrypoint_{script.stem}", script)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])  # its own argument parser takes --preset
    assert exit_.value.code == 0 and "--preset" in capsys.readouterr().out
    sweep = _sweep_file(script)
    spec = load_sweep(sweep, preset=preset)  # the preset is the sweep file's or its base config's
    assert spec.trials


def test_rayjob_runtime_env_is_valid_and_complete():
    from ray.runtime_env import RuntimeEnv

    from drifting_platform import config as C

    job = rayjob()
    raw = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**raw)  # Ray's own validation of every field
    # the stock Ray image has no drifting_platform: the job installs it from its working dir
    assert re.match(r"(s3|gs|https)://.+\.zip$", raw["working_dir"]), "KubeRay pods need a remote working_dir"
    packages = raw["pip"]["packages"] if isinstance(raw["pip"], dict) else raw["pip"]
    assert "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}" in packages
    # K8sJobMode hands the runtime env to `ray job submit` through a shell, which would
    # expand ${...} before Ray sees it
    if "${" in job["spec"]["runtimeEnvYAML"]:
        assert job["spec"].get("submissionMode") == "HTTPMode"
    env = raw.get("env_vars", {})
    assert re.fullmatch(r"https?://[^@\s]+", env["MLFLOW_TRACKING_URI"])
    # every ${VAR} that the entrypoint's preset of the base config reads is set for the job
    script, preset = _entrypoint(job)
    base = (_sweep_file(script).parent / load(_sweep_file(script))["base"]).resolve()
    wanted = set(re.findall(r"\$\{(\w+)\}", str(C.read_yaml(base).get("presets", {}).get(preset, {}))))
    assert wanted <= set(env), f"the {preset} preset needs {sorted(wanted - set(env))} in env_vars"


def test_rayjob_preset_trials_run_on_the_gpu_workers():
    from drifting_platform.launch.spec import load_sweep

    script, preset = _entrypoint(rayjob())
    spec = load_sweep(_sweep_file(script), preset=preset)
    cfg = spec.trial_config(spec.trials[0].params)
    assert spec.resources.gpu is True, "the RayJob brings GPU workers, the sweep should use them"
    assert cfg.train.device in ("cuda", "auto")


@pytest.mark.parametrize("sweep", ["antisymmetry.yaml", "encoder.yaml"])
def test_paper_presets_are_the_release_setting_on_gpu_workers(sweep, monkeypatch, tmp_path):
    """The sweep files' paper presets load and validate as a cluster job would (RAY_ADDRESS
    set: the GPUs are the cluster's), every trial is the release's ablation setting."""
    from drifting_platform.launch.spec import load_sweep

    monkeypatch.setenv("RAY_ADDRESS", "ray://head.invalid:10001")
    monkeypatch.setenv("DRIFTING_DATA", str(tmp_path))
    spec = load_sweep(EXPERIMENTS / sweep, preset="paper")
    assert spec.resources.gpu is True and spec.trials
    for t in spec.trials:
        cfg = spec.trial_config(t.params)
        assert (cfg.model.name, cfg.data.name, cfg.data.stream, cfg.encoder.name) == ("release-b/2", "prepared", True, "release_mae")
        assert (cfg.sampling.n_classes, cfg.sampling.n_gen, cfg.sampling.n_pos, cfg.sampling.n_unc) == (64, 64, 64, 16)
        assert (cfg.train.lr, cfg.train.warmup_steps, cfg.train.steps, cfg.train.ema_decay, cfg.train.precision) == (2e-4, 5000, 30000, 0.999, "bf16")
        assert cfg.eval.every == 5000 and cfg.eval.cfg_scales[0] == 1.0 and cfg.eval.cfg_scales[-1] == 3.5
    sources = {spec.trial_config(t.params).encoder.source for t in spec.trials}
    assert "hf://mae_latent_256" in sources
    for enc in spec.encoders.values():  # encoders pre-trained for the paper preset: on the latents, on GPUs
        assert enc.data.name == "prepared" and enc.train.device == "cuda" and enc.release_mae.base_channels >= 256


def test_paper_preset_shows_and_names_what_this_machine_lacks(tmp_path):
    """`config show ... --preset paper` prints the validated config; without the data it says
    which variable is missing instead of a traceback."""
    env = {k: v for k, v in os.environ.items() if k not in ("DRIFTING_DATA", "DRIFTING_INCEPTION_WEIGHTS")}
    cmd = [sys.executable, "-m", "drifting_platform.cli", "config", "show", str(EXPERIMENTS / "configs" / "digits.yaml"), "--preset", "paper"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "DRIFTING_" in r.stderr and "is not set" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cmd + ["--no-machine-check"], capture_output=True, text=True, timeout=120,
                       env={**env, "DRIFTING_DATA": str(tmp_path), "DRIFTING_INCEPTION_WEIGHTS": str(tmp_path / "w.pth")})
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(r.stdout.split("\n# presets")[0])
    assert shown["model"]["name"] == "release-b/2" and shown["encoder"]["source"] == "hf://mae_latent_256"


# --------------------------------------------------------------------------- runtime env file


def test_runtime_env_file_is_valid_and_ships_the_package():
    from ray._private.runtime_env.packaging import _get_excludes
    from ray.runtime_env import RuntimeEnv

    raw = load(RUNTIME_ENV)
    RuntimeEnv(**raw)
    # the job imports drifting_platform from what it ships, not from whatever the nodes hold
    mods = [REPO / m for m in raw["py_modules"]]
    assert any(m.name == "drifting_platform" and (m / "__init__.py").is_file() for m in mods), raw["py_modules"]
    assert raw.get("working_dir", ".") == "."
    excluded = _get_excludes(REPO, raw["excludes"])  # Ray's own matcher
    for path in (".venv/bin/python", ".git/HEAD", "runs/x/summary.json", "mlruns/0/meta.yaml", "x.db",
                 "platform/drifting_platform/__pycache__/drift.cpython-311.pyc"):
        assert excluded(REPO / path), f"{path} would be uploaded"
    for path in ("experiments/antisymmetry.yaml", "experiments/configs/digits.yaml", "platform/drifting_platform/drift.py"):
        assert not excluded(REPO / path), f"{path} would be left out"
    assert not any(SECRET_NAME.search(k) for k in raw.get("env_vars", {}))


# --------------------------------------------------------------------------- MLflow compose


_VAR = re.compile(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}")


def _default_value(text: str) -> str:
    """`${MLFLOW_BIND:-127.0.0.1}` -> 127.0.0.1 (what compose uses when the variable is unset)."""
    return _VAR.sub(lambda m: m.group("default") or "", text)


def _published(entry) -> tuple[str, str, str]:
    """Short-syntax port `HOST_IP:HOST_PORT:CONTAINER_PORT` with defaults applied."""
    assert isinstance(entry, str), f"use the HOST_IP:HOST:CONTAINER form, got {entry!r}"
    parts = _default_value(entry).split(":")
    assert len(parts) == 3, f"{entry!r} publishes on every interface (no host IP)"
    return parts[0], parts[1], parts[2].split("/")[0]


def _mlflow_command(compose: dict) -> list[str]:
    cmd = compose["services"]["mlflow"]["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _option(argv: list[str], name: str) -> str:
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {argv}")


def test_compose_services_and_mlflow_server_command():
    compose = load(COMPOSE)
    services = compose["services"]
    assert {"postgres", "minio", "createbuckets", "mlflow"} <= set(services)
    argv = _mlflow_command(compose)
    assert argv[:2] == ["mlflow", "server"]
    backend = _option(argv, "--backend-store-uri")
    assert re.match(r"(postgresql|mysql)(\+\w+)?://", backend), backend
    assert "@postgres:" in backend
    dest = _option(argv, "--artifacts-destination")
    assert dest.startswith("s3://")
    assert "--serve-artifacts" in argv and "--no-serve-artifacts" not in argv
    assert _option(argv, "--host") == "0.0.0.0" and _option(argv, "--port") == "5000"  # inside the container
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    # the bucket the server writes to is the one the one-shot service creates
    bucket = dest[len("s3://"):].split("/")[0]
    created = " ".join(services["createbuckets"]["command"])
    assert re.search(rf"mc mb (--ignore-existing )?local/{re.escape(bucket)}\b", created), created
    deps = services["mlflow"]["depends_on"]
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["createbuckets"]["condition"] == "service_completed_successfully"


def test_compose_ports_bind_localhost_by_default():
    compose = load(COMPOSE)
    published = {name: [_published(p) for p in svc.get("ports", [])] for name, svc in compose["services"].items()}
    assert ("127.0.0.1", "5000", "5000") in published["mlflow"]
    assert not published["postgres"], "the database needs no published port"
    for name, ports in published.items():
        for ip, _, _ in ports:
            assert ip == "127.0.0.1", f"{name} publishes on {ip} by default"
    raw = [p for svc in compose["services"].values() for p in svc.get("ports", [])]
    assert "${MLFLOW_BIND:-127.0.0.1}:5000:5000" in raw  # other interfaces only on purpose
    # the parser is live: a bare port or a 0.0.0.0 default is noticed
    with pytest.raises(AssertionError):
        _published("5000:5000")
    assert _published("${MLFLOW_BIND:-0.0.0.0}:5000:5000")[0] == "0.0.0.0"


def test_compose_secrets_come_from_the_env_file():
    compose = load(COMPOSE)
    for name, svc in compose["services"].items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        for key, value in env.items():
            if SECRET_NAME.search(key) or key.endswith("ROOT_USER") or key.startswith("AWS_ACCESS_KEY"):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}.{key} must be ${{VAR:?...}}, got {value!r}"
    backend = _option(_mlflow_command(compose), "--backend-store-uri")
    assert re.search(r":\$\{POSTGRES_PASSWORD:\?[^}]+\}@", backend), backend


def test_compose_mlflow_image_matches_installed_mlflow():
    mlflow_version = importlib.metadata.version("mlflow")
    compose = load(COMPOSE)
    svc = compose["services"]["mlflow"]
    if "build" in svc:
        dockerfile = CLUSTER / svc["build"].get("context", ".") / svc["build"].get("dockerfile", "Dockerfile")
        froms = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)
        assert froms, dockerfile
        image = froms[-1]
        assert re.search(r"psycopg2|psycopg\b", dockerfile.read_text()) and "boto3" in dockerfile.read_text()
    else:
        image = svc["image"]
    repo, tag = image_tag(image)
    assert repo == "ghcr.io/mlflow/mlflow"
    major_minor = ".".join(mlflow_version.split(".")[:2])
    assert tag.lstrip("v").startswith(major_minor + "."), f"{image}: clients run MLflow {mlflow_version}"


# --------------------------------------------------------------------------- README


def test_readme_names_files_that_exist():
    text = (CLUSTER / "README.md").read_text()
    named = set(re.findall(r"cluster/([\w.-]+\.(?:ya?ml|example|Dockerfile|md))", text))
    assert {"ray-cluster.yaml", "kuberay-rayjob.yaml", "runtime_env.yaml", "mlflow-compose.yaml"} <= named
    for name in named:
        assert (CLUSTER / name).is_file(), f"cluster/README.md names cluster/{name}, which does not exist"
