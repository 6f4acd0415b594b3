from django.db import migrations, models

from somafractalmemory.memories import fulltext


class Migration(migrations.Migration):
    dependencies = [
        ("memories", "0008_outbox_dead_letter"),
    ]

    operations = [
        migrations.AddField(
            model_name="memory",
            name="context_tokens",
            field=models.TextField(
                blank=True,
                default="",
                help_text="Keyed tokens of the memory with its neighbouring episodes, written "
                "with its vector where SQL full text serves the lexical legs (lexical_engine, no "
                "Milvus BM25).",
            ),
        ),
        # SQLite rebuilds the table for a new column: the full-text tables and triggers go
        # with it (fulltext.py); version 3 adds the context tokens' index.
        migrations.RunPython(
            lambda apps, editor: fulltext.install(editor, version=3),
            lambda apps, editor: fulltext.install(editor, version=2),
        ),
    ]
