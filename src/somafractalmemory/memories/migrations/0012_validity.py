import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models
from django.db.models.functions import Least

import somafractalmemory.memories.models
from somafractalmemory.memories import fulltext


def fill_valid_from(apps, schema_editor):
    """Memories stored before this migration are valid from their event time, or from when
    they were recorded if that was earlier (a future event time does not hide a memory)."""
    Memory = apps.get_model("memories", "Memory")
    Memory.objects.filter(valid_from__isnull=True).update(
        valid_from=Least("created_at", "stored_at")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("memories", "0011_setting"),
    ]

    operations = [
        # Reversed, the columns' removal rebuilds the table again: reinstall after it.
        migrations.RunPython(
            migrations.RunPython.noop, lambda apps, editor: fulltext.install(editor, version=3)
        ),
        migrations.AddField(
            model_name="memory",
            name="key",
            field=models.CharField(
                blank=True,
                default="",
                help_text="A client's identity for a fact: a new memory with the same key in "
                "the namespace is its next version (the previous one's validity ends).",
                max_length=200,
            ),
        ),
        migrations.AddField(
            model_name="memory",
            name="valid_from",
            field=models.DateTimeField(null=True),
        ),
        migrations.RunPython(fill_valid_from, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="memory",
            name="valid_from",
            field=somafractalmemory.memories.models.ValidFromField(
                help_text="Valid from (default: its event time, or when it was recorded if "
                "earlier)."
            ),
        ),
        migrations.AddField(
            model_name="memory",
            name="valid_until",
            field=models.DateTimeField(
                blank=True, help_text="Valid until (exclusive); null: still valid.", null=True
            ),
        ),
        migrations.AddField(
            model_name="memory",
            name="expires_at",
            field=models.DateTimeField(
                blank=True, help_text="Out of searches and listings from this instant.", null=True
            ),
        ),
        migrations.AlterField(
            model_name="memory",
            name="stored_at",
            field=models.DateTimeField(
                default=django.utils.timezone.now,
                help_text="When the service recorded it (the API's `recorded_at`, never set by "
                "clients; an import keeps the original's); orders episodes with one event time.",
            ),
        ),
        migrations.AddIndex(
            model_name="memory",
            index=models.Index(
                condition=models.Q(("key", ""), _negated=True),
                fields=["tenant", "namespace", "key", "valid_from"],
                name="mem_key",
            ),
        ),
        migrations.AddConstraint(
            model_name="memory",
            constraint=models.UniqueConstraint(
                condition=models.Q(
                    models.Q(("key", ""), _negated=True), ("valid_until__isnull", True)
                ),
                fields=("tenant", "namespace", "key"),
                name="key_open_once",
            ),
        ),
        migrations.CreateModel(
            name="NamespacePolicy",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("namespace", models.CharField(max_length=128)),
                (
                    "ttl_seconds",
                    models.PositiveBigIntegerField(
                        blank=True,
                        help_text="Stores without an expiry of their own expire after this.",
                        null=True,
                    ),
                ),
                (
                    "on_expiry",
                    models.CharField(
                        choices=[("archive", "archive"), ("erase", "erase")],
                        default="archive",
                        help_text="What forgetting does with an expired memory: archive it, or "
                        "erase it.",
                        max_length=16,
                    ),
                ),
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="policies",
                        to="memories.tenant",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("tenant", "namespace"), name="policy_once")
                ],
            },
        ),
        # SQLite rebuilds the table for these columns: the full-text tables and triggers go
        # with it (fulltext.py).
        migrations.RunPython(
            lambda apps, editor: fulltext.install(editor, version=3), migrations.RunPython.noop
        ),
    ]
