from django.db import migrations


def create_default_tenant(apps, schema_editor):
    apps.get_model("memories", "Tenant").objects.get_or_create(id="default")


class Migration(migrations.Migration):
    dependencies = [("memories", "0001_initial")]

    operations = [migrations.RunPython(create_default_tenant, migrations.RunPython.noop)]
