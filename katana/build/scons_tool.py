"""katana.build.scons_tool

Tool-specific initialization for Katana: builds whose programs can be hot-patched.

The tool guarantees the compiler and linker flags patch generation relies on, refuses the flags
that defeat it, records which objects each program is made of, and adds two targets:
``scons release VERSION=v1`` snapshots the programs into ``releases/v1/`` and
``scons patch FROM=v0 TO=v1`` turns two snapshots into Patch Objects under ``patches/``.

Load it after the toolchain, ``Environment(tools=['default', 'katana'])``: SCons's ``link``
tool resets ``LINKFLAGS`` when it loads. From a project without ``site_scons``, pass
``toolpath=[katana.build.scons_tool.TOOLPATH]``. See docs/scons-tool.md.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
import traceback
from pathlib import Path

import SCons.Action
import SCons.Builder
import SCons.Errors
import SCons.Script
import SCons.Tool
import SCons.Util
import SCons.Variables

from katana.build import flags as buildflags
from katana.build.flags import LINK_FLAGS, Compiler
from katana.build.snapshot import MANIFEST, Snapshot, make_snapshot
from katana.errors import KatanaError, NoChangeError

#: Directory to pass as ``toolpath`` so that SCons finds this tool as ``katana``.
TOOLPATH = str(Path(__file__).resolve().parent / "site_tools")

#: The katana package itself. SCons registers a tool module in ``sys.modules`` under the tool's
#: bare name, which hides this package; the tool shims in site_tools put it back from here.
PACKAGE = sys.modules[__package__.partition(".")[0]]

_COMPILE_VARS = ("CCFLAGS", "CFLAGS", "CXXFLAGS", "SHCCFLAGS", "SHCFLAGS", "SHCXXFLAGS")
_LINK_VARS = ("LINKFLAGS", "SHLINKFLAGS")

_VARIABLE_HELP = [
    ("VERSION", "release to snapshot: scons release VERSION=v1"),
    ("FROM", "release a patch starts from: scons patch FROM=v0 TO=v1"),
    ("TO", "release a patch leads to: scons patch FROM=v0 TO=v1"),
    ("SIGN_KEY", "private key that signs each patch written (PATCH.sig): "
                 "scons patch FROM=v0 TO=v1 SIGN_KEY=ci.key"),
]


class KatanaUserError(SCons.Errors.StopError, SCons.Errors.UserError):
    """A build description that cannot give patchable programs.

    A UserError, as SCons tools raise; also a StopError, which SCons reports while reading
    SConscripts as one line, without pointing at the tool's own source as the culprit.
    """


def _user_error(message: str) -> KatanaUserError:
    """The error for ``message``, naming the user's SConscript line that led to it."""
    ours = (os.path.dirname(SCons.Errors.__file__), os.path.dirname(__file__))
    frames = [f for f in traceback.extract_stack() if not f.filename.startswith(ours)]
    where = f" ({os.path.basename(frames[-1].filename)}, line {frames[-1].lineno})" \
        if frames else ""
    return KatanaUserError(f"katana: {message}{where}")


# -- flags -----------------------------------------------------------------------------------

def _args(env, var: str) -> list[str]:
    """The arguments ``$var`` expands to, with linker options split one per ``-Wl,``."""
    return buildflags.linker_split([str(word) for word in env.subst_list("$" + var)[0]])


def _count(env, var: str, flag: str) -> int:
    return sum(buildflags.satisfies(arg, flag) for arg in _args(env, var))


def _append(env, var: str, flag: str) -> None:
    # CLVar splits a user's string value ('-O2 -g') the way a command line would, so that the
    # variable stays one flat list of arguments.
    env[var] = SCons.Util.CLVar(env.get(var, [])) + [flag]


def _remove(env, var: str, flag: str) -> None:
    args = list(SCons.Util.CLVar(env.get(var, [])))
    if flag in args:
        del args[len(args) - 1 - args[::-1].index(flag)]
        env[var] = SCons.Util.CLVar(args)


def _compiler(env) -> Compiler:
    """What ``$CC`` is (asked once per compiler)."""
    argv = shlex.split(env.subst("$CC"))
    if argv:
        argv[0] = env.WhereIs(argv[0]) or argv[0]
    return buildflags.probe_compiler(argv, {k: str(v) for k, v in env["ENV"].items()})


def _compile_flags(env) -> list[str]:
    return buildflags.compile_flags(env.Dir("#").get_abspath(), _compiler(env),
                                    bool(env.get("KATANA_OUTLINE_CALLEES", True)))


def _placement(env, flag: str, ours: str | None) -> str | None:
    """Where the tool's copy of ``flag`` belongs (None: the user's own flags already do it)."""
    def given(var: str) -> bool:
        return _count(env, var, flag) - (var == ours) > 0

    if flag in LINK_FLAGS:
        return None if given("LINKFLAGS") else "LINKFLAGS"
    if given("CCFLAGS") or (given("CFLAGS") and given("CXXFLAGS")):
        return None
    return "CXXFLAGS" if given("CFLAGS") else "CFLAGS" if given("CXXFLAGS") else "CCFLAGS"


def _require_flags(env) -> None:
    """Put every flag patching needs on the compile and link lines, each exactly once.

    The user's flags may change after the tool loaded: Environment(CFLAGS=...) even restores
    its value after the tools ran. So the tool remembers where it put each flag of its own, and
    moves or withdraws it when the user's flags now do the job (or the option was turned off).
    """
    placed = dict(env.get("_KATANA_PLACED", {}))
    wanted = _compile_flags(env) + LINK_FLAGS
    for flag in wanted + [flag for flag in placed if flag not in wanted]:
        ours = placed.pop(flag, None)
        if ours and not any(arg == flag for arg in _args(env, ours)):
            ours = None  # the user replaced that variable since
        want = _placement(env, flag, ours) if flag in wanted else None
        if ours != want:
            if ours:
                _remove(env, ours, flag)
            if want:
                _append(env, want, flag)
        if want:
            placed[flag] = want
    env["_KATANA_PLACED"] = placed
    _require_pic(env)


def _require_pic(env) -> None:
    """Objects of a shared library are position independent: SCons's SHCCFLAGS says -fPIC by
    default, but a project may have replaced it, and a library then fails to link (or, with
    -fpie objects, links code the patch cannot be placed next to)."""
    if not any(arg in ("-fPIC", "-fpic") for arg in _args(env, "SHCCFLAGS")):
        _append(env, "SHCCFLAGS", "-fPIC")


def _refuse_flags(env) -> None:
    """Raise a UserError naming the first flag that defeats patching, and its fix."""
    for var in _COMPILE_VARS + _LINK_VARS:
        for arg in _args(env, var):
            refused = buildflags.refusal(arg)
            if refused:
                why, fix = refused
                raise _user_error(f"{var} contains {arg}, which {why}; {fix}, or build "
                                  "this program without the katana tool")


# -- emitters --------------------------------------------------------------------------------

def _object_emitter(target, source, env):
    # Flags may be appended, or replaced (Environment(CCFLAGS=...) restores its value after the
    # tools ran), after the tool loaded: check again for every object.
    if env.get("_KATANA"):
        _require_flags(env)
        _refuse_flags(env)
    return target, source


def _linked_emitter(kind: str):
    def emitter(target, source, env):
        if env.get("_KATANA"):
            _require_flags(env)
            _refuse_flags(env)
            suffixes = (env.subst("$OBJSUFFIX"), env.subst("$SHOBJSUFFIX"))
            objects = [node for node in source if str(node).endswith(suffixes)]
            for node in target:
                node.attributes.katana_linked = (kind, objects)
            env.Alias("release", target)
        return target, source
    emitter.__name__ = f"katana_{kind}_emitter"
    return emitter


_program_emitter = _linked_emitter("program")
_shlib_emitter = _linked_emitter("shared_library")


def _add_emitters(env) -> None:
    # LoadableModule (a plugin the program dlopen()s) is a shared library to katana
    env.AppendUnique(PROGEMITTER=[_program_emitter], SHLIBEMITTER=[_shlib_emitter],
                     LDMODULEEMITTER=[_shlib_emitter])
    for builder in SCons.Tool.createObjBuilders(env):
        for suffix, emitter in list(builder.emitter.items()):
            if isinstance(emitter, SCons.Builder.ListEmitter) and _object_emitter in emitter:
                continue
            builder.emitter[suffix] = SCons.Builder.ListEmitter([emitter, _object_emitter])


# -- command line: VERSION, FROM, TO, FORCE --------------------------------------------------

def _variables():
    variables = SCons.Variables.Variables(None, SCons.Script.ARGUMENTS)
    for key, text in _VARIABLE_HELP:
        variables.Add(key, text, None)
    variables.Add(SCons.Variables.BoolVariable(
        "FORCE", "replace an existing release snapshot (scons release VERSION=v1 FORCE=1)", False))
    return variables


def _check_unknown(variables) -> None:
    """Refuse a command-line variable that looks like a misspelt katana one (FORM=v0)."""
    names = [option.key for option in variables.options]
    for arg, value in variables.UnknownVariables().items():
        same = [name for name in names if name == arg.upper()]
        close = same or difflib.get_close_matches(arg.upper(), names, n=1, cutoff=0.7)
        if close:
            raise _user_error(f"unknown variable {arg}={value}; did you mean {close[0]}={value}?")


def _usage(text: str) -> None:
    print(f"scons: *** usage: {text}", file=sys.stderr)
    SCons.Script.Exit(2)


def _release_dir(env, version: str):
    return env.Dir("$KATANA_RELEASES").Dir(version)


def _check_version(name: str, value: str) -> None:
    if value in (".", "..") or not re.fullmatch(r"[A-Za-z0-9._+-]+", value):
        raise _user_error(f"{name}={value} is not a release name "
                          "(letters, digits and . _ + - only)")


def _command_line(env) -> None:
    """Read the katana variables; once per run, add help, check usage and declare targets."""
    variables = _variables()
    variables.Update(env)
    args = {key: SCons.Script.ARGUMENTS.get(key) for key in ("VERSION", "FROM", "TO")}
    sign_key = SCons.Script.ARGUMENTS.get("SIGN_KEY")
    state = env.fs.Top.attributes.__dict__
    if state.get("katana_command_line"):
        return
    state["katana_command_line"] = True
    _check_unknown(variables)
    for key, value in args.items():
        if value is not None:
            _check_version(key, value)
    if SCons.Script.sconscript_reading:
        SCons.Script.Help(_HELP + variables.GenerateHelpText(env), append=True)
    if SCons.Script.GetOption("help"):
        return
    targets = SCons.Script.COMMAND_LINE_TARGETS
    if "release" in targets and not args["VERSION"]:
        _usage("scons release VERSION=<version>")
    if "patch" in targets and not (args["FROM"] and args["TO"]):
        _usage("scons patch FROM=<version> TO=<version>")
    if args["VERSION"]:
        _declare_release(env, args["VERSION"], bool(env["FORCE"]))
    if "patch" in targets:
        # relative to where scons was started (-C/-u may change directory), as a user means it
        key = os.path.join(SCons.Script.GetLaunchDir(), sign_key) if sign_key else None
        _declare_patches(env, args["FROM"], args["TO"], key)


_HELP = """
Katana (hot patches):
    scons release VERSION=v1      build the programs, snapshot them into releases/v1/
    scons patch FROM=v0 TO=v1     write patches/<program>-v0-v1.po from two snapshots,
                                  one per program and per shared library that changed
    scons patch FROM=v0 TO=v1 SIGN_KEY=ci.key   ... and sign each (patches/*.po.sig)
"""


# -- release ---------------------------------------------------------------------------------

def _declare_release(env, version: str, force: bool) -> None:
    alias = env.Alias("release", [], SCons.Action.Action("$KATANA_RELEASECOM",
                                                          "$KATANA_RELEASECOMSTR"))
    for node in alias:
        node.attributes.katana_release = (version, force)
    # the snapshot is cheap to compare, and its immutability check must run on every release
    env.AlwaysBuild(alias)


def _release_action(target, source, env) -> int:
    version, force = target[0].attributes.katana_release
    programs: dict[str, tuple[Path, str, list[Path]]] = {}
    for node in source:
        linked = getattr(node.attributes, "katana_linked", None)
        if linked is None:
            continue  # something the user added to the alias: built, not snapshotted
        kind, objects = linked
        if node.name in programs:
            raise _error(target, KatanaError(f"two programs are named {node.name}; a release "
                                             "needs distinct program names"))
        programs[node.name] = (Path(node.get_abspath()), kind,
                               [Path(o.get_abspath()) for o in objects])
    if not programs:
        raise _error(target, KatanaError("no programs were built with the katana tool"))
    flags_env = _first_object_env(source) or env
    top = env.Dir("#").get_abspath()
    dest = Path(_release_dir(env, version).get_abspath())
    before = _read_text(dest / MANIFEST)
    try:
        snapshot = make_snapshot(
            dest, version, programs, _compiler(flags_env).banner,
            buildflags.portable(_args(flags_env, "CCFLAGS") + _args(flags_env, "CFLAGS"), top),
            buildflags.portable(_args(flags_env, "LINKFLAGS"), top), force=force)
    except KatanaError as e:
        raise _error(target, e) from None
    state = "unchanged" if _read_text(dest / MANIFEST) == before else "written"
    print(f"katana: {os.path.relpath(dest, top)} {state}: "
          f"{', '.join(snapshot.program_names())} ({len(snapshot.files())} files)")
    return 0


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _first_object_env(programs):
    for node in programs:
        for obj in getattr(node.attributes, "katana_linked", (None, []))[1]:
            return obj.get_build_env()
    return None


# -- patch -----------------------------------------------------------------------------------

def _load_release(env, version: str) -> Snapshot:
    path = _release_dir(env, version)
    if not os.path.isdir(path.get_abspath()):
        raise _user_error(f"release {version} has no snapshot ({path.get_path()} does not exist); "
                          f"make it from the {version} sources with: scons release "
                          f"VERSION={version}")
    try:
        return Snapshot.load(path.get_abspath())
    except KatanaError as e:
        raise _user_error(_describe(e)) from None


def _check_sign_key(path: str) -> None:
    """Refuse a SIGN_KEY that cannot sign before anything is generated (one line, exit 2)."""
    from katana.po.signature import load_private_key

    try:
        load_private_key(path)
    except KatanaError as e:
        raise _user_error(f"SIGN_KEY: {_describe(e)}") from None


def _declare_patches(env, old_version: str, new_version: str, sign_key: str | None) -> None:
    if old_version == new_version:
        raise _user_error(f"FROM and TO are both {old_version}: a patch needs two releases")
    old, new = _load_release(env, old_version), _load_release(env, new_version)
    if sign_key:
        _check_sign_key(sign_key)
    for program in old.program_names():
        if program not in new.program_names():
            print(f"katana: {program} is in release {old_version} but not in {new_version}: "
                  "no patch for it", file=sys.stderr)
            continue
        if old.build_id(program) == new.build_id(program):
            # one tree built twice: a program the change did not touch links to the same bytes
            print(f"katana: {program} {old_version} -> {new_version}: the same build, "
                  "no patch for it")
            continue
        sources = [old.root / MANIFEST, new.root / MANIFEST]
        for snapshot in (old, new):
            sources += [snapshot.executable(program), *snapshot.objects(program)]
        # a library's PO is named after its file (patches/libkv.so-v0-v1.po), like a program's
        po = f"$KATANA_PATCHES/{program}-{old_version}-{new_version}.po"
        # the .sig is a target, so that scons -c removes it with its PO; the key's path is in
        # the action's varlist (not its bytes among the sources: .sconsign would keep their hash)
        node = env.KatanaPatch(
            [po, po + ".sig"] if sign_key else po, [str(s) for s in sources],
            KATANA_PATCH_PROGRAM=program, KATANA_PATCH_OLD=str(old.root),
            KATANA_PATCH_NEW=str(new.root), KATANA_PATCH_FROM=old_version,
            KATANA_PATCH_TO=new_version, KATANA_SIGN_KEY=sign_key or "")
        env.Alias("patch", node)


def _patch_action(target, source, env) -> int:
    # imported here: generation is heavy, and only the patch target needs it
    from katana.generate.api import generate_patch

    program = env["KATANA_PATCH_PROGRAM"]
    old, new = env["KATANA_PATCH_FROM"], env["KATANA_PATCH_TO"]
    try:
        summary = generate_patch(env["KATANA_PATCH_OLD"], env["KATANA_PATCH_NEW"], program,
                                 target[0].get_abspath())
    except NoChangeError as e:
        print(f"katana: {program} {old} -> {new}: no functional change, no patch written "
              f"({_describe(e)})")
        return 0
    except KatanaError as e:
        raise _error(target, e) from None
    for line in summary.lines():
        print(line)
    _sign(target, env)
    return 0


def _sign(target, env) -> None:
    """Sign the PO just written with SIGN_KEY; or remove a signature a key signed before."""
    from katana.po.signature import short_id, sig_path, sign_bytes, write_signature

    po = Path(target[0].get_abspath())
    key = env.get("KATANA_SIGN_KEY")
    if not key:
        # a signature of an earlier PO of that name would make this one look tampered with
        sig_path(po).unlink(missing_ok=True)
        return
    try:
        signature = sign_bytes(po.read_bytes(), key)
        write_signature(po, signature)
    except KatanaError as e:
        po.unlink(missing_ok=True)  # CI must not publish the PO unsigned
        raise _error(target, e) from None
    print(f"katana: {target[0]} signed by key {short_id(signature.key_id)}")


def _describe(error: KatanaError) -> str:
    return error.message + (f" (hint: {error.hint})" if error.hint else "")


def _error(target, error: KatanaError) -> SCons.Errors.BuildError:
    """A build failure that SCons reports as one line, without a Python traceback."""
    return SCons.Errors.BuildError(node=target[0], errstr=f"katana: {_describe(error)}",
                                   status=error.exit_code, exitstatus=2)


_release = SCons.Action.Action(_release_action, "$KATANA_RELEASECOMSTR")
_patch = SCons.Action.Action(_patch_action, "$KATANA_PATCHCOMSTR",
                             varlist=["KATANA_PATCH_PROGRAM", "KATANA_PATCH_OLD",
                                      "KATANA_PATCH_NEW", "KATANA_PATCH_FROM", "KATANA_PATCH_TO",
                                      "KATANA_SIGN_KEY"])
_patch_builder = SCons.Builder.Builder(
    action=SCons.Action.Action("$KATANA_PATCHCOM", "$KATANA_PATCHCOMSTR"), suffix=".po")


def generate(env) -> None:
    """Add the katana flags, checks, emitters, variables and targets to an Environment."""
    env["_KATANA"] = True
    env.SetDefault(
        KATANA_OUTLINE_CALLEES=True,
        KATANA_RELEASES="#releases",
        KATANA_PATCHES="#patches",
        KATANA_RELEASECOM=_release,
        KATANA_RELEASECOMSTR="katana: snapshot of release $VERSION",
        KATANA_PATCHCOM=_patch,
        KATANA_PATCHCOMSTR="katana: patch $TARGET",
    )
    if "KatanaPatch" not in env["BUILDERS"]:
        env["BUILDERS"]["KatanaPatch"] = _patch_builder
    _require_flags(env)
    _refuse_flags(env)
    _add_emitters(env)
    _command_line(env)


def exists(env) -> bool:
    # SCons does not call exists() for tools found in a toolpath: generate() copes on its own.
    return bool(env.Detect(env.subst("$CC") or "cc"))
