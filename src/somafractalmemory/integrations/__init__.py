"""Adapters for agent frameworks (optional extras): LangGraph, LangChain."""
