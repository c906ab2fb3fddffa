"""zoom-worker: Celery workers that create and delete Zoom meetings.

``celery -A worker`` finds the Celery app here; nothing else is exported.
"""

from worker.celery_app import app

__all__ = ["app"]
