from django.db import migrations

from somafractalmemory.memories import fulltext


def install(apps, schema_editor):
    fulltext.install(schema_editor, version=1)


def uninstall(apps, schema_editor):
    fulltext.uninstall(schema_editor)


class Migration(migrations.Migration):
    dependencies = [("memories", "0002_default_tenant")]

    operations = [migrations.RunPython(install, uninstall)]
