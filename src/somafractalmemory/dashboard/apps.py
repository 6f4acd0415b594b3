from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "somafractalmemory.dashboard"
    label = "dashboard"
