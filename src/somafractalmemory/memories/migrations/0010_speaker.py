import importlib

from django.db import migrations

import somafractalmemory.memories.models
from somafractalmemory.memories import fulltext

# The keyed tokens as 0006 froze them, so that this migration keeps doing what it did.
_tokens_of = importlib.import_module("somafractalmemory.memories.migrations.0006_sealed").tokens_of


def speaker_tokens(metadata, tenant):
    who = metadata.get("speaker") if isinstance(metadata, dict) else None
    return " ".join(_tokens_of(who, tenant).split()[:4]) if isinstance(who, str) else ""


def fill_speakers(apps, schema_editor):
    """Give the memories stored before this migration the keyed tokens of their speaker."""
    Memory = apps.get_model("memories", "Memory")
    last = ""
    while True:
        chunk = list(
            Memory.objects.filter(id__gt=last).order_by("id").only("id", "tenant_id", "metadata")[
                :1000
            ]
        )
        if not chunk:
            return
        for memory in chunk:
            tokens = speaker_tokens(memory.metadata, memory.tenant_id)
            if tokens:
                Memory.objects.filter(pk=memory.pk).update(speaker=tokens)
        last = chunk[-1].id


class Migration(migrations.Migration):
    dependencies = [
        ("memories", "0009_context_tokens"),
    ]

    operations = [
        # Reversed, the column's removal rebuilds the table again: reinstall after it.
        migrations.RunPython(
            migrations.RunPython.noop, lambda apps, editor: fulltext.install(editor, version=3)
        ),
        migrations.AddField(
            model_name="memory",
            name="speaker",
            field=somafractalmemory.memories.models.SpeakerField(
                blank=True,
                default="",
                help_text="Keyed tokens of metadata.speaker (who said it; ranking's speaker "
                "signal).",
                max_length=80,
            ),
        ),
        # SQLite rebuilds the table for a new column: the full-text tables and triggers go
        # with it (fulltext.py).
        migrations.RunPython(
            lambda apps, editor: fulltext.install(editor, version=3), migrations.RunPython.noop
        ),
        migrations.RunPython(fill_speakers, migrations.RunPython.noop),
    ]
