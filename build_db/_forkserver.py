"""Imported by the fork server only (`worker_pool` names it in `set_forkserver_preload`): makes the fork
server end with the build process that started it, so its pool workers (which end with it) never outlive a
killed build. Nothing else imports this module."""

from .progress import die_with_parent

die_with_parent()
