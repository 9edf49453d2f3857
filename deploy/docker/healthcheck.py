"""The image's HEALTHCHECK: exit 0 when inferd answers ready ($INFERD_HEALTH_URL), else 1.

The standard library only, so the check needs nothing beyond the image's Python."""

import os
import sys
import urllib.request


def main() -> int:
    url = os.environ.get("INFERD_HEALTH_URL", "http://127.0.0.1:8000/v2/health/ready")
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as exc:  # refused, timed out, or an HTTP error status (503 while loading or draining)
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
