from django.urls import path

from somafractalmemory.dashboard import views

urlpatterns = [
    path("", views.home, name="home"),
    path("search", views.search, name="search"),
    path("memory/<str:memory_id>", views.memory, name="memory"),
    path("login", views.login, name="login"),
    path("logout", views.logout, name="logout"),
]
