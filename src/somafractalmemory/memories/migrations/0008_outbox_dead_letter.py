from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("memories", "0007_content_size"),
    ]

    operations = [
        migrations.AddField(
            model_name="vectortask",
            name="dead_at",
            field=models.DateTimeField(
                blank=True,
                help_text="Dead-lettered: failed DEAD_AFTER times while the index answered; "
                "kept with its last error for `sfm doctor`, no longer retried.",
                null=True,
            ),
        ),
    ]
