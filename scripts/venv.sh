# Sourced (not run) by scripts/test.sh and scripts/demo.sh:
#
#   source scripts/venv.sh && ensure_venv
#
# Makes sure .venv/ at the repository root exists and holds this package
# installed editable with its dev and bench extras. The install is skipped when a stamp
# file in .venv records that it was done for the current pyproject.toml and
# interpreter, so a second run costs a second, not a pip resolve of TensorFlow.
# Progress goes to stderr.

ensure_venv() {
    local root venv python want stamp
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="$root/.venv"
    stamp="$venv/.recsys-install-stamp"

    if [[ ! -x "$venv/bin/python" ]]; then
        python="$(command -v python3.11 || command -v python3 || true)"
        if [[ -z "$python" ]]; then
            echo "venv: no python3.11 or python3 on PATH" >&2
            return 1
        fi
        if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            echo "venv: $python is Python $("$python" -c 'import platform; print(platform.python_version())'), the project needs 3.11" >&2
            return 1
        fi
        echo "venv: creating $venv with $python" >&2
        "$python" -m venv "$venv"
    fi

    want="$(cat "$root/pyproject.toml" <("$venv/bin/python" -VV) | sha256sum | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    echo "venv: installing the package and its dev and bench extras into $venv (first time: several minutes)" >&2
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    (cd "$root" && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]') >&2
    echo "$want" > "$stamp"
}
