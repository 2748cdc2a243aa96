"""Weights by Hub repo id, for real, without internet: an olah server on 127.0.0.1 serves a local git
repo as a Hub model repo; huggingface_hub downloads from it into a private HF_HOME."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bgremove_plugin import ModelLoadError, remove_background
from bgremove_plugin.hub import DEFAULT_WEIGHTS_DIR, OFFICIAL_REPO_ID, OFFICIAL_REVISION, load_model

from .conftest import PORTRAIT, free_port

REPO_ID = "bgremove-test/tiramisu-person"
V1_INPUT_SIZE = 256

# Runs in a fresh interpreter because huggingface_hub reads HF_ENDPOINT once, when it is imported.
LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from bgremove_plugin import ModelLoadError, remove_background
    from bgremove_plugin.hub import load_model
    repo, revision, image, out = sys.argv[1:5]
    try:
        model = load_model(repo, revision=revision or None)
    except ModelLoadError as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(0)
    mask = remove_background(image, model=repo, revision=revision or None, return_mask=True, device="cpu")
    np.save(out, np.asarray(mask))
    print(json.dumps({"input_size": model.input_size}))
    """
)


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@invalid", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("hub")
    repo = root / "mirrors" / "models" / REPO_ID
    repo.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "model.onnx"):
        shutil.copy(DEFAULT_WEIGHTS_DIR / name, repo / name)
    # Tag v1 is the same weights run at another working size; main is the default weights as they ship.
    config = json.loads((DEFAULT_WEIGHTS_DIR / "config.json").read_text())
    (repo / "config.json").write_text(json.dumps({**config, "input_size": V1_INPUT_SIZE}))
    _git("init", "-q", "-b", "main", cwd=repo)
    _git("add", ".", cwd=repo)
    _git("commit", "-qm", "weights at 256", cwd=repo)
    _git("tag", "v1", cwd=repo)
    shutil.copy(DEFAULT_WEIGHTS_DIR / "config.json", repo / "config.json")
    _git("commit", "-qam", "weights", cwd=repo)
    port = free_port()
    (root / "olah.toml").write_text(
        textwrap.dedent(
            f"""
            [basic]
            host = "127.0.0.1"
            port = {port}
            mirror-netloc = "127.0.0.1:{port}"
            mirror-lfs-netloc = "127.0.0.1:{port}"
            repos-path = "{root / 'cache'}"
            mirrors-path = ["{root / 'mirrors'}"]

            [accessibility]
            offline = true
            """
        )
    )
    olah = shutil.which("olah-cli") or str(Path(sys.executable).parent / "olah-cli")
    log = (root / "olah.log").open("w")
    server = subprocess.Popen([olah, "-c", str(root / "olah.toml")], cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"olah did not start: {(root / 'olah.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


def _load_in_subprocess(env_extra: dict[str, str], hf_home: Path, out: Path, repo: str = REPO_ID, revision: str = "") -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1", **env_extra})
    result = subprocess.run(
        [sys.executable, "-c", LOADER, repo, revision, str(PORTRAIT), str(out)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_load_by_repo_id_then_offline_from_the_cache(hub_server: str, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf_home"
    expected = np.asarray(remove_background(PORTRAIT, model=DEFAULT_WEIGHTS_DIR, return_mask=True, device="cpu"))

    online = _load_in_subprocess({"HF_ENDPOINT": hub_server}, hf_home, tmp_path / "online.npy")
    assert online == {"input_size": load_model().input_size}
    np.testing.assert_array_equal(np.load(tmp_path / "online.npy"), expected)
    cached = list((hf_home / "hub").glob("models--*/snapshots/*/model.safetensors"))
    assert len(cached) == 1, "the download lands in HF_HOME's cache"

    # No server at this endpoint: only the cache filled above can answer.
    offline = _load_in_subprocess({"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}, hf_home, tmp_path / "offline.npy")
    assert offline == online
    np.testing.assert_array_equal(np.load(tmp_path / "offline.npy"), expected)


ONNX_LOADER = textwrap.dedent(
    """
    import json, sys
    from bgremove_plugin import BackgroundRemover
    from bgremove_plugin import onnx_backend
    exported = []
    onnx_backend.export_onnx = lambda *args, **kwargs: exported.append(args)
    remover = BackgroundRemover(sys.argv[1], device="cpu", backend="onnx")
    print(json.dumps({"onnx": str(remover._onnx.path), "exported": len(exported)}))
    """
)


def test_the_onnx_backend_uses_the_graph_published_with_the_weights(hub_server: str, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_ENDPOINT": hub_server})
    result = subprocess.run(
        [sys.executable, "-c", ONNX_LOADER, REPO_ID], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["exported"] == 0, "the published model.onnx should have been used, not a fresh export"
    assert Path(report["onnx"]).is_relative_to(hf_home) and Path(report["onnx"]).name == "model.onnx"


def test_revision_is_honoured(hub_server: str, tmp_path: Path) -> None:
    tagged = _load_in_subprocess({"HF_ENDPOINT": hub_server}, tmp_path / "hf", tmp_path / "v1.npy", revision="v1")
    main = _load_in_subprocess({"HF_ENDPOINT": hub_server}, tmp_path / "hf", tmp_path / "main.npy", revision="main")
    assert tagged == {"input_size": V1_INPUT_SIZE} and main == {"input_size": load_model().input_size} != tagged
    missing = _load_in_subprocess({"HF_ENDPOINT": hub_server}, tmp_path / "hf", tmp_path / "x.npy", revision="no-such-tag")
    assert "error" in missing and "no-such-tag" in str(missing["error"])


def test_missing_repo_is_a_clear_error(hub_server: str, tmp_path: Path) -> None:
    result = _load_in_subprocess({"HF_ENDPOINT": hub_server}, tmp_path / "hf", tmp_path / "x.npy", repo="bgremove-test/missing")
    assert "error" in result and "bgremove-test/missing" in str(result["error"])


def test_offline_without_cache_says_how_to_fix_it(tmp_path: Path) -> None:
    result = _load_in_subprocess({"HF_HUB_OFFLINE": "1"}, tmp_path / "empty_home", tmp_path / "x.npy")
    assert "error" in result and "cache" in str(result["error"])


def test_local_files_only_never_touches_the_network(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cache"):
        load_model("bgremove-test/never-downloaded", local_files_only=True, cache_dir=tmp_path)


def test_the_docs_name_the_official_repo_and_revision() -> None:
    root = Path(__file__).resolve().parents[1]
    readme, card = (root / "README.md").read_text(), (root / "model_card.md").read_text()
    assert f'load_model("{OFFICIAL_REPO_ID}", revision="{OFFICIAL_REVISION}")' in readme
    assert OFFICIAL_REPO_ID in card
