"""docs/tour.md is what docs/make_tour.py makes of the code today (so it cannot drift)."""
import subprocess
import sys

from conftest import REPO_ROOT


def test_tour_is_up_to_date(shared_images):
    done = subprocess.run([sys.executable, str(REPO_ROOT / "docs" / "make_tour.py"), "--check"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
