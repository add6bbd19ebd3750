import subprocess
import sys


def _loaded(modules: str) -> set[str]:
    code = (
        f"import sys; import {modules}; "
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lmdeploy'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(filter(None, out.stdout.strip().split(",")))


def test_pure_modules_never_import_lmdeploy_and_index_needs_no_torch():
    assert _loaded("sagellm.prefix_reuse, sagellm.kv_policy") == set()
    assert _loaded("sagellm.kv_runtime") == {"torch"}
