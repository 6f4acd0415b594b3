from django.apps import AppConfig
from django.db import DatabaseError


def _outbox_depth() -> int:
    from somafractalmemory.memories.indexing import outbox_depth

    try:
        return outbox_depth()
    except DatabaseError:
        return -1  # the scrape still answers; readyz says what is wrong


class MemoriesConfig(AppConfig):
    name = "somafractalmemory.memories"
    label = "memories"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from somafractalmemory import metrics

        metrics.watch_outbox(_outbox_depth)
