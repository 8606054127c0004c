"""Where the local weight caches are: torch's hub cache (torchvision's downloads) and the Hugging Face hub cache.

Light (no torch, no huggingface_hub): a study's spec and plan ask the families where their weights are while
reading files only. Each library's rule is replicated in ONE function here, and
tests/test_model_families.py compares it with the library itself under several environments, so an upgrade
that moves a cache fails that test instead of sending a study to the wrong folder.
"""

from __future__ import annotations

import os


def torch_hub_dir() -> str:
    """torch.hub.get_dir() without set_dir: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return os.path.join(os.path.expanduser(home), "hub")


def torch_hub_file(name: str) -> str:
    """Where torchvision's `load_state_dict_from_url` keeps a downloaded file: <hub>/checkpoints/<name>."""
    return os.path.join(torch_hub_dir(), "checkpoints", name)


def hf_hub_cache() -> str:
    """huggingface_hub.constants.HF_HUB_CACHE: $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub,
    else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    def expand(path: str) -> str:
        return os.path.expandvars(os.path.expanduser(path))

    home = expand(os.getenv("HF_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                                     "huggingface")))
    return expand(os.getenv("HF_HUB_CACHE", os.getenv("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub"))))


def hf_repo_folder(repo_id: str) -> str:
    """The cache folder of a model repository: <cache>/models--<owner>--<name>."""
    return os.path.join(hf_hub_cache(), "models--" + repo_id.replace("/", "--"))


def hf_snapshot_file(repo_id: str, filenames: tuple[str, ...]) -> str | None:
    """The first of `filenames` in a cached snapshot of `repo_id`: the snapshot refs/main names first, then the
    others in name order (deterministic on every node); None when none is there."""
    snapshots = os.path.join(hf_repo_folder(repo_id), "snapshots")
    try:
        revisions = sorted(os.listdir(snapshots))
    except OSError:
        return None
    try:
        with open(os.path.join(hf_repo_folder(repo_id), "refs", "main")) as handle:
            main = handle.read().strip()
    except OSError:
        main = ""
    for revision in sorted(revisions, key=lambda name: name != main):
        for filename in filenames:
            path = os.path.join(snapshots, revision, filename)
            if os.path.isfile(path):
                return path
    return None
