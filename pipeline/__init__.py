"""The drivers of the experiment: the `pneumonia` command, the profiles, and the two ways to run the steps.

cli               the `pneumonia` command; a subcommand's module is imported only when it runs
experiment        `pneumonia experiment`: picks a driver
profiles          how much compute each step gets (quick, full: defaults per step config) and the strategies
plan              the experiment's steps, each with its typed config (shared.configs)
steps             run_steps: the step order, their timings and the final printout, for both drivers
in_process        each step as the `pneumonia` subcommand, in this process
through_services  each step as a call to a service (trainer, generator, analyzer, TorchServe)
endpoints         where the services listen
local_stack       every service as a local process (`--local-services`)
"""
