import importlib.metadata
import subprocess
import sys

import pytest

from icecache.core.errors import ConfigError, UnknownComponentError
from icecache.core.hookspecs import hookimpl
from icecache.core.plugins import build_registry, get_plugin_manager
from icecache.core.policy import compose_policy


class _Widgets:
    @hookimpl
    def icecache_register_selectors(self, register):
        register("widget", lambda config, **kw: ("widget", config), description="test selector")


def test_manager_is_fresh_each_time():
    a, b = get_plugin_manager(load_entrypoints=False), get_plugin_manager(load_entrypoints=False)
    assert a is not b
    a.register(_Widgets())
    assert "widget" in build_registry(a).names("selector")
    assert "widget" not in build_registry(b).names("selector")


def test_registry_records_the_source_of_each_component():
    pm = get_plugin_manager(load_entrypoints=False, extra=(_Widgets(),))
    reg = build_registry(pm).get("selector", "widget")
    assert reg.description == "test selector"
    assert not reg.source.startswith("builtin:")


def test_unknown_name_lists_available_names():
    pm = get_plugin_manager(load_entrypoints=False, extra=(_Widgets(),))
    with pytest.raises(UnknownComponentError) as info:
        build_registry(pm).get("selector", "widgit")
    assert "unknown selector 'widgit'" in str(info.value)
    assert "widget" in str(info.value)


def test_compose_policy_rejects_unknown_tier_listing_names():
    pm = get_plugin_manager(load_entrypoints=False, extra=(_Widgets(),))
    with pytest.raises(UnknownComponentError, match="unknown tier 'floppy'"):
        compose_policy(selector="widget", tiers=("floppy",), plugin_manager=pm)


def test_duplicate_registration_names_both_sources():
    class Again(_Widgets):
        pass

    pm = get_plugin_manager(load_entrypoints=False, extra=(_Widgets(), Again()))
    with pytest.raises(ConfigError, match="selector 'widget' registered twice"):
        build_registry(pm)


def test_misspelled_hook_fails_at_check_pending():
    class Typo:
        @hookimpl
        def icecache_register_selector(self, register):  # missing "s"
            pass

    with pytest.raises(Exception, match="icecache_register_selector"):
        get_plugin_manager(load_entrypoints=False, extra=(Typo(),))


def test_importing_the_package_loads_no_plugins():
    code = ("import sys, icecache, icecache.core.plugins, icecache.core.policy; "
            "print(any(m.startswith('icecache_example_plugin') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _example_installed():
    return any(ep.name == "example" for ep in importlib.metadata.entry_points(group="icecache"))


@pytest.mark.skipif(not _example_installed(), reason="example plugin not installed (make setup installs it)")
def test_icecache_plugins_env_var_limits_entry_points(monkeypatch):
    monkeypatch.setenv("ICECACHE_PLUGINS", "")
    names = [n for n, _ in get_plugin_manager().list_name_plugin()]
    assert not any(n.startswith("entrypoint:") for n in names)
    monkeypatch.setenv("ICECACHE_PLUGINS", "example")
    names = [n for n, _ in get_plugin_manager().list_name_plugin()]
    assert any(n.startswith("entrypoint:example") for n in names)


def test_an_unknown_name_in_icecache_plugins_is_an_error_naming_it(monkeypatch, capsys):
    from icecache.cli.main import main
    from icecache.core.errors import ConfigError

    monkeypatch.setenv("ICECACHE_PLUGINS", "exampel, example")
    with pytest.raises(ConfigError, match=r"ICECACHE_PLUGINS names 'exampel': no installed plugin"):
        get_plugin_manager()
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert "icecache plugins: error: ICECACHE_PLUGINS names 'exampel'" in err and "Traceback" not in err
    monkeypatch.setenv("ICECACHE_PLUGINS", "exampel")
    assert get_plugin_manager(load_entrypoints=False) is not None  # nothing read when not loading them


def test_a_bad_option_value_is_a_config_error_naming_option_and_value_not_an_attrs_tuple():
    from icecache.core.errors import ConfigError
    from icecache.core.policy import compose_policy

    policy = compose_policy(selector="icecache", options={"selector": {"rank_by": "x"}})
    with pytest.raises(ConfigError) as info:
        policy.make_selector(policy.config.dense_layers)
    assert str(info.value) == ("options of selector 'icecache': 'rank_by' must be in ('density', 'mass') "
                               "(got 'x')")
    assert "Attribute(" not in str(info.value)
