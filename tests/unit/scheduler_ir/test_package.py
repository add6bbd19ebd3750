import subprocess
import sys

import sagellm.scheduler_ir as scheduler_ir


def test_public_names_resolve():
    for name in scheduler_ir.__all__:
        assert getattr(scheduler_ir, name) is not None, name


def test_imports_no_engine_or_torch():
    code = (
        "import sys; import sagellm.scheduler_ir, sagellm.scheduler_ir.strategies.adaptive; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lmdeploy', 'numpy', 'transformers'}); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
