from collections.abc import Callable

from django.apps import AppConfig
from django.db import DatabaseError


def _counted(count: Callable[[], int]) -> Callable[[], int]:
    def read() -> int:
        try:
            return count()
        except DatabaseError:
            return -1  # the scrape still answers; readyz says what is wrong

    return read


class MemoriesConfig(AppConfig):
    name = "somafractalmemory.memories"
    label = "memories"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from somafractalmemory import metrics
        from somafractalmemory.memories import indexing

        metrics.watch_outbox(
            _counted(indexing.outbox_depth), _counted(lambda: len(indexing.dead_letters()))
        )
