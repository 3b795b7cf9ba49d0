"""The deploy web frontend's core (issue 12): users, roles, sessions and tokens (`auth`), signed
webhooks (`webhooks`), and the job queue the root worker runs (`jobs`). No HTTP here yet."""
