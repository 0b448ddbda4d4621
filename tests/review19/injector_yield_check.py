"""Review 19: does tests/test_interrupts.py's Injector (55b8cf0) keep a *suspended*
generator's seen lines, and forget a *finished* one's? Standalone (the Injector's code is
taken from tests/test_interrupts.py by ast, without importing apsw or sqlitesaver), so it runs
on any Python the project admits (requires-python >= 3.10):

    python3.X tests/review19/injector_yield_check.py

Exit status 1 and a line per wrong case. Seen on 3.10-3.12: 'finished at a yield' wrong (the
return event of a frame ended by close()/throw() is at its YIELD_VALUE). On 3.13: 'suspended'
wrong as well (the return event of a yield is at the RESUME after YIELD_VALUE, so every yield
forgets the generator's lines: a `with` line reported again before its __exit__ is counted and
injected at, which the Injector's _never_delivered exists to prevent)."""

import ast
import dis
import linecache
import os
import sys

SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "test_interrupts.py")
tree = ast.parse(open(SOURCE).read())
wanted = {"Injector", "_never_delivered", "_YIELD"}
body = [node for node in tree.body
        if (isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in wanted)
        or (isinstance(node, ast.Assign) and any(getattr(t, "id", None) in wanted
                                                  for t in node.targets))]
namespace = {"dis": dis, "linecache": linecache, "sys": sys, "os": os,
             "WRITE_PATH": (), "Injected": type("Injected", (BaseException,), {})}
exec(compile(ast.Module(body=body, type_ignores=[]), SOURCE, "exec"), namespace)
Injector = namespace["Injector"]
HERE = os.path.abspath(__file__)
frames = []


def generator():
    frames.append(id(sys._getframe()))
    yield 1
    yield 2


def check(how):
    injector = Injector(None, files=(HERE,))
    frames.clear()
    kept = []

    def call():
        gen = generator()
        next(gen)
        if how == "finished at a yield":
            gen.close()
        kept.append(gen)

    injector.run(call)
    alive = how == "suspended"
    return (frames[0] in injector._seen) == alive


wrong = [how for how in ("suspended", "finished at a yield") if not check(how)]
for how in wrong:
    print(f"{sys.version.split()[0]}: a generator frame {how}: its seen lines "
          f"{'forgotten' if how == 'suspended' else 'kept'}")
sys.exit(1 if wrong else 0)
