"""The CLI verbs, one small module each: parse → one library call → print.

Every module here exposes ``add(subparsers)``, which declares its verb's arguments and sets
its handler, a ``run(args)`` that calls one library function and prints its result. Only this
package parses arguments. :mod:`search.cli` wires the verbs; handlers import the library only
when they run, so ``merge-search --help`` imports no torch, Optuna or lm-eval.

Dependencies: a command may import any package of the service; nothing imports a command.
"""
