#!/usr/bin/env python3
"""Build nabla's API reference with Doxygen and fail on any gap in it.

    python3 docs/check_docs.py [OUTDIR]      (default OUTDIR: build/docs; `meson compile -C build docs`
                                             runs it with build/docs)

Writes OUTDIR/html/index.html (and OUTDIR/xml, read back here) from docs/Doxyfile, then checks:
  1. Doxygen printed no warning (undocumented functions, types, fields, macros; malformed comments);
  2. every public header has a @file comment, and every function it declares, as the C compiler
     sees them (gcc -aux-info), every nb_ type and every NB_ macro it defines is documented in the
     XML (Doxygen skips what it cannot parse, and does not warn outside documented files and groups);
  3. every enum value is documented (Doxygen does not warn about those);
  4. no brief description stops at an abbreviation ("e.g." ends the first sentence, see
     JAVADOC_AUTOBRIEF): write "such as" or "for example" instead.
Prints each problem as FILE:LINE: message, and one summary line; exits 1 when there is any.
Needs doxygen and a C compiler (CC, default cc); the standard library only."""
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABBREVIATIONS = ("e.g.", "i.e.", "cf.", "vs.", "resp.")


def where_of(path):
    """A header's path as Doxygen's XML gives it (relative to include/) made absolute."""
    return path if os.path.isabs(path) else os.path.join(ROOT, "include", path)


def text(node):
    return " ".join("".join(node.itertext()).split()) if node is not None else ""


def project_version():
    with open(os.path.join(ROOT, "meson.build")) as f:
        m = re.search(r"version\s*:\s*'([^']+)'", f.read())
    return m.group(1) if m else ""


def run_doxygen(out):
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "warnings.log")
    with open(os.path.join(ROOT, "docs", "Doxyfile")) as f:
        config = f.read()
    config += f'\nOUTPUT_DIRECTORY = "{out}"\nWARN_LOGFILE = "{log}"\nPROJECT_NUMBER = "{project_version()}"\n'
    r = subprocess.run([os.environ.get("DOXYGEN", "doxygen"), "-"], input=config, text=True, cwd=ROOT,
                       capture_output=True)
    if r.returncode != 0:
        sys.stdout.write(r.stdout + r.stderr)
        sys.exit(f"check_docs: doxygen failed (exit {r.returncode})")
    with open(log) as f:
        return [line.rstrip() for line in f if line.strip()]


def documented_members(xmldir):
    """{(kind, name): (documented, file, line)} over the XML's members (functions, typedefs, enums,
    enum values, macros, struct fields)."""
    seen = {}
    for path in glob.glob(os.path.join(xmldir, "*.xml")):
        root = ET.parse(path).getroot()
        for m in root.iter("memberdef"):
            loc = m.find("location")
            where = (where_of(loc.get("file")), loc.get("line")) if loc is not None else ("?", "?")
            doc = bool(text(m.find("briefdescription")) or text(m.find("detaileddescription")))
            key = (m.get("kind"), m.findtext("name"))
            seen[key] = (seen.get(key, (False,))[0] or doc,) + where
            for ev in m.iter("enumvalue"):
                doc = bool(text(ev.find("briefdescription")) or text(ev.find("detaileddescription")))
                key = ("enumvalue", ev.findtext("name"))
                seen[key] = (seen.get(key, (False,))[0] or doc,) + where
    return seen


def documented_compounds(xmldir):
    """{name: documented} of structs and files."""
    seen = {}
    for path in glob.glob(os.path.join(xmldir, "*.xml")):
        for c in ET.parse(path).getroot().iter("compounddef"):
            if c.get("kind") in ("struct", "union", "file"):
                name = c.findtext("compoundname")
                seen[name] = bool(text(c.find("briefdescription")) or text(c.find("detaileddescription")))
    return seen


def briefs(xmldir):
    for path in glob.glob(os.path.join(xmldir, "*.xml")):
        for m in ET.parse(path).getroot().iter("memberdef"):
            b = text(m.find("briefdescription"))
            loc = m.find("location")
            yield m.findtext("name"), b, (where_of(loc.get("file")), loc.get("line")) if loc is not None else ("?", "?")


def public_headers():
    inc = os.path.join(ROOT, "include")
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(inc, "**", "*.h"), recursive=True))


def compiler_view(header, cc):
    """The functions header declares (gcc -aux-info) and the NB_ macros it defines (cc -E -dD), as
    {name: line}; None when the header does not compile on its own (it is then checked by Doxygen
    alone)."""
    extra = []
    if os.path.basename(header) != "nabla.h":
        extra = ["-include", "nabla.h"]
    mpi = subprocess.run(["pkg-config", "--cflags", "mpi"], capture_output=True, text=True)
    flags = shlex.split(mpi.stdout) if mpi.returncode == 0 else []
    with tempfile.TemporaryDirectory() as tmp:
        aux = os.path.join(tmp, "aux.txt")
        r = subprocess.run(cc + ["-std=c11", "-Iinclude"] + flags + extra + ["-fsyntax-only", "-aux-info", aux,
                                                                            "-x", "c", header],
                           cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            return None, r.stderr.strip().splitlines()[:3]
        funcs = {}
        with open(aux) as f:
            for line in f:
                m = re.match(r"/\* (\S+):(\d+):\w+ \*/ .*?\b(nb_\w+) \(", line)
                if m and os.path.normpath(m.group(1)) == os.path.normpath(header):
                    funcs[m.group(3)] = int(m.group(2))
    r = subprocess.run(cc + ["-std=c11", "-Iinclude"] + flags + ["-E", "-dD", "-x", "c", header], cwd=ROOT,
                       capture_output=True, text=True)
    macros, types, cur, line = {}, {}, None, 0
    for l in r.stdout.splitlines():
        m = re.match(r'# (\d+) "([^"]+)"', l)
        if m:
            cur, line = os.path.normpath(m.group(2)), int(m.group(1))
            continue
        if cur == os.path.normpath(header):
            m = re.match(r"#define (NB_\w+)", l)
            if m:
                macros[m.group(1)] = line
            # typedef names: "typedef struct nb_x nb_x;", "} nb_x;", "typedef T (*nb_fn)(...);"
            m = (re.match(r"\s*typedef\b.*\(\s*\*\s*(nb_\w+)\s*\)\s*\(", l)
                 or re.match(r"\s*typedef\b[^;(]*\b(nb_\w+)\s*;", l) or re.match(r"\s*\}\s*(nb_\w+)\s*;", l))
            if m:
                types[m.group(1)] = line
        line += 1
    return (funcs, macros, types), None


def main(argv):
    out = os.path.abspath(argv[1]) if len(argv) > 1 else os.path.join(ROOT, "build", "docs")
    cc = shlex.split(os.environ.get("CC", "cc"))
    problems = []
    warnings = run_doxygen(out)
    problems += warnings
    xmldir = os.path.join(out, "xml")
    members = documented_members(xmldir)
    compounds = documented_compounds(xmldir)

    checked = 0
    for h in public_headers():
        view, err = compiler_view(h, cc)
        if not compounds.get(os.path.basename(h)):
            problems.append(f"{os.path.join(ROOT, h)}:1: no /** @file ... */ comment: Doxygen does not warn about "
                            "what the file declares outside a group")
        if view is None:
            problems.append(f"{os.path.join(ROOT, h)}:1: does not compile after #include <nabla.h>, so it "
                            "could not be cross-checked: " + " / ".join(err))
            continue
        funcs, macros, types = view
        for name, line in sorted(funcs.items(), key=lambda kv: kv[1]):
            checked += 1
            d = members.get(("function", name))
            if not d or not d[0]:
                problems.append(f"{os.path.join(ROOT, h)}:{line}: function {name} has no documentation"
                                + ("" if d else " (Doxygen did not see its declaration)"))
        for name, line in sorted(macros.items(), key=lambda kv: kv[1]):
            checked += 1
            d = members.get(("define", name))
            if not d or not d[0]:
                problems.append(f"{os.path.join(ROOT, h)}:{line}: macro {name} has no documentation")
        for name, line in sorted(types.items(), key=lambda kv: kv[1]):
            checked += 1
            d = members.get(("typedef", name)) or members.get(("enum", name))
            if not (d and d[0]) and not compounds.get(name):
                problems.append(f"{os.path.join(ROOT, h)}:{line}: type {name} has no documentation")
    for (kind, name), (doc, f, line) in sorted(members.items(), key=lambda kv: (kv[1][1], int(kv[1][2] or 0))):
        if kind == "enumvalue" and not doc:
            problems.append(f"{f}:{line}: enum value {name} has no documentation (/**< ... */ after it)")
    for name, b, (f, line) in briefs(xmldir):
        if b.endswith(ABBREVIATIONS):
            problems.append(f"{f}:{line}: the brief of {name} stops at an abbreviation: \"{b}\"")

    for p in sorted(set(problems)):
        print(p)
    n_warn = len(set(warnings))
    print(f"check_docs: {n_warn} Doxygen warnings, {len(set(problems)) - n_warn} other problems; "
          f"{checked} declared functions, types and macros cross-checked; reference at {os.path.join(out, 'html', 'index.html')}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
