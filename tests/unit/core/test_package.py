import subprocess
import sys

import sagellm.core as core


def test_public_names_resolve():
    for name in core.__all__:
        assert getattr(core, name) is not None, name


def test_core_imports_only_stdlib_and_yaml():
    code = (
        "import sys; import sagellm.core; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lmdeploy', 'typer', 'numpy', 'transformers'}); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
