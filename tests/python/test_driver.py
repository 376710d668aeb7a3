import datetime
import os
import time
import unittest
import warnings
from unittest import mock

from tests.python.fake_driver import FakeDriver, make_driver

from nix_vmtest.driver import formatwarning, pythonize_name
from nix_vmtest.errors import RequestedAssertionFailed
from nix_vmtest.machine import Machine, MachineDeprecationWrapper, retry


class Retry(unittest.TestCase):
    def test_true_at_once(self) -> None:
        calls = []
        retry(lambda last: calls.append(last) or True)
        self.assertEqual(calls, [False])

    def test_timeout_then_last_try(self) -> None:
        calls = []
        with mock.patch("nix_vmtest.machine.time.sleep") as sleep:
            with self.assertRaises(RequestedAssertionFailed) as cm:
                retry(lambda last: calls.append(last) or False, timeout_seconds=0)
        self.assertEqual(calls, [True])
        self.assertRegex(str(cm.exception), r"^action timed out after \d+\.\d\d seconds \(timeout=0\)$")
        sleep.assert_not_called()

    def test_once_a_second_and_last_try_succeeds(self) -> None:
        calls = []
        clock = [0.0]
        with mock.patch("nix_vmtest.machine.time.monotonic", side_effect=lambda: clock[0]), \
             mock.patch("nix_vmtest.machine.time.sleep",
                        side_effect=lambda s: clock.__setitem__(0, clock[0] + s)) as sleep:
            retry(lambda last: calls.append(last) or last, timeout_seconds=3)
        self.assertEqual(calls, [False, False, False, True])
        self.assertEqual([c.args for c in sleep.call_args_list], [(1,), (1,), (1,)])

    def test_timedelta_and_later_name(self) -> None:
        for kw in ({"timeout_seconds": datetime.timedelta(seconds=3)},
                   {"timeout": datetime.timedelta(milliseconds=3000)},
                   {"timeout": 3}):
            with self.subTest(kw=kw):
                calls = []
                clock = [0.0]
                with mock.patch("nix_vmtest.machine.time.monotonic", side_effect=lambda: clock[0]), \
                     mock.patch("nix_vmtest.machine.time.sleep",
                                side_effect=lambda s: clock.__setitem__(0, clock[0] + s)):
                    with self.assertRaises(RequestedAssertionFailed) as cm:
                        retry(lambda last: calls.append(last) and False, **kw)
                self.assertEqual(calls, [False, False, False, True])
                self.assertEqual(str(cm.exception), "action timed out after 3.00 seconds (timeout=3)")
        with self.assertRaises(TypeError):
            retry(lambda last: True, timeout_seconds=5, timeout=datetime.timedelta(seconds=5))
        with self.assertRaisesRegex(TypeError, r"timedelta or a number of seconds, not str"):
            retry(lambda last: True, timeout_seconds="5")
        with mock.patch("nix_vmtest.machine.time.sleep"):
            with self.assertRaisesRegex(RequestedAssertionFailed, r"\(timeout=0.5\)$"):
                retry(lambda last: False, timeout_seconds=datetime.timedelta(seconds=0.5))


class Globals(unittest.TestCase):
    def tearDown(self) -> None:
        self.fake.close()

    def test_names(self) -> None:
        self.fake = FakeDriver(machines=[("web-1", [1]), ("db.x", [1, 2]), ("9lives", [2])], vlans=[1, 2])
        g = make_driver(self.fake).make_globals()
        for name in ("start_all", "join_all", "test_script", "run_tests", "subtest", "retry",
                     "polling_condition", "serial_stdout_on", "serial_stdout_off", "log", "driver",
                     "machines", "vlans", "os", "create_machine", "t"):
            self.assertIn(name, g)
        self.assertIs(g["os"], os)
        self.assertIsInstance(g["web_1"], Machine)
        self.assertEqual(g["web_1"].name, "web-1")
        self.assertEqual(g["db_x"].name, "db.x")
        self.assertEqual(g["db_x"].vlans, [1, 2])
        self.assertEqual(g["9lives"].name, "9lives")  # driver-api.md's rule
        self.assertIs(g["_lives"], g["9lives"])  # nixpkgs' rule, an identifier
        self.assertNotIn("machine", g)
        self.assertEqual([m.name for m in g["machines"]], ["9lives", "db.x", "web-1"])
        self.assertEqual(g["vlan1"].nr, 1)
        self.assertEqual(g["vlan2"].nr, 2)
        self.assertEqual([v.nr for v in g["vlans"]], [1, 2])
        self.assertEqual(pythonize_name("a-b.c"), "a_b_c")

    def test_machine_alias_only_with_one(self) -> None:
        self.fake = FakeDriver(machines=["server"])
        g = make_driver(self.fake).make_globals()
        alias = g["machine"]
        self.assertIsInstance(alias, MachineDeprecationWrapper)
        self.assertIs(alias.machine, g["server"])
        text = ("invoking 'QemuMachine.{}' is deprecated: It's deprecated to use the `machine` "
                "variable when the only machine is called server. This behavior will no longer "
                "work in NixOS 27.05.")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.assertEqual(alias.name, "server")
            alias.succeed("true")
        self.assertEqual([str(w.message) for w in caught],
                         [text.format("name"), text.format("succeed")])
        self.assertEqual({w.category for w in caught}, {UserWarning})
        self.assertEqual(self.fake.of("execute")[0]["machine"], "server")
        # An assignment reaches the machine.
        alias.connected = False
        self.assertEqual(self.fake.ops(exclude_logs=True)[-1], "disconnect")
        # Under Python's default filter, once per attribute, as nixpkgs'.
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for _ in range(3):
                alias.name
        self.assertEqual(len(caught), 1)

    def test_machine_alias_plain_when_so_named_or_several(self) -> None:
        self.fake = FakeDriver(machines=["machine"])
        g = make_driver(self.fake).make_globals()
        self.assertIsInstance(g["machine"], Machine)
        self.fake.close()
        self.fake = FakeDriver(machines=["a", "b"])
        g = make_driver(self.fake).make_globals()
        self.assertNotIn("machine", g)
        self.fake.close()
        self.fake = FakeDriver(machines=["9x"])
        g = make_driver(self.fake).make_globals()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g["machine"].name
        self.assertIn("the only machine is called _x.", str(caught[0].message))

    def test_machines_qemu(self) -> None:
        self.fake = FakeDriver(machines=["b", "a"])
        d = make_driver(self.fake)
        g = d.make_globals()
        self.assertEqual(g["machines_qemu"], g["machines"])
        self.assertIsNot(g["machines_qemu"], g["machines"])
        self.assertIs(g["machines_qemu"], d.machines_qemu)
        self.assertEqual([m.name for m in g["machines_qemu"]], ["a", "b"])
        self.assertEqual(g["machines_nspawn"], [])


    def test_t_raises_requested_assertion(self) -> None:
        self.fake = FakeDriver()
        g = make_driver(self.fake).make_globals()
        with self.assertRaises(RequestedAssertionFailed):
            g["t"].assertEqual(1, 2)
        g["t"].assertIn("a", "abc")


class Warnings(unittest.TestCase):
    def test_formatwarning_as_nixpkgs(self) -> None:
        self.assertEqual(
            formatwarning(UserWarning("it is old"), UserWarning, "/x/m.py", 7, "  warnings.warn(\n"),
            '??? Warning (UserWarning): it is old\n    File "/x/m.py", line 7\n      warnings.warn(\n')


class DriverOps(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeDriver(machines=["b", "a"], vlans=[1])
        self.driver = make_driver(self.fake)
        self.g = self.driver.make_globals()
        self.fake.requests.clear()

    def tearDown(self) -> None:
        self.fake.close()

    def test_subtest_nesting(self) -> None:
        with self.g["subtest"]("outer"):
            with self.g["subtest"]("inner"):
                self.g["log"].info("hello")
        with self.assertRaises(RequestedAssertionFailed):
            with self.g["subtest"]("bad"):
                raise RequestedAssertionFailed("boom")
        with self.assertRaises(AssertionError):
            with self.g["subtest"]("bare"):
                raise AssertionError()
        self.assertEqual([(r["op"], r["args"]) for r in self.fake.requests], [
            ("subtest_begin", {"name": "outer"}),
            ("subtest_begin", {"name": "inner"}),
            ("log", {"message": "hello"}),
            ("subtest_end", {"error": None}),
            ("subtest_end", {"error": None}),
            ("subtest_begin", {"name": "bad"}),
            ("log", {"message": '!!! Test "bad" failed with error: "boom"'}),
            ("subtest_end", {"error": "boom"}),
            ("subtest_begin", {"name": "bare"}),
            ("log", {"message": '!!! Test "bare" failed with error: ""'}),
            ("subtest_end", {"error": "AssertionError"}),
        ])

    def test_failed_subtest_logs_nixpkgs_line_marked(self) -> None:
        # nixpkgs' Driver.subtest: `Test "<name>" failed with error: "<str(e)>"`
        # through log_test_error (`!!! `), inside the subtest, for each
        # subtest the exception leaves; every line of it marked here.
        with self.assertRaises(ValueError):
            with self.g["subtest"]("outer"):
                with self.g["subtest"]("inner"):
                    raise ValueError("two\nlines")
        with self.assertRaises(KeyboardInterrupt):  # not an Exception: no line
            with self.g["subtest"]("interrupted"):
                raise KeyboardInterrupt()
        self.assertEqual([(r["op"], r["args"]) for r in self.fake.requests], [
            ("subtest_begin", {"name": "outer"}),
            ("subtest_begin", {"name": "inner"}),
            ("log", {"message": '!!! Test "inner" failed with error: "two\n!!! lines"'}),
            ("subtest_end", {"error": "two\nlines"}),
            ("log", {"message": '!!! Test "outer" failed with error: "two\n!!! lines"'}),
            ("subtest_end", {"error": "two\nlines"}),
            ("subtest_begin", {"name": "interrupted"}),
            ("subtest_end", {"error": "KeyboardInterrupt"}),
        ])

    def test_log_test_error_marks_every_line(self) -> None:
        log = self.g["log"]
        log.log_test_error("one")
        log.log_test_error("a\nb\n")
        log.log_test_error("")
        self.assertEqual(self.fake.log_lines(), ["!!! one", "!!! a\n!!! b", "!!! "])

    def test_log_object(self) -> None:
        log = self.g["log"]
        with log.nested("outer"):
            log.info("i")
            log.warning("w")
            log.error("e")
            log.log("m", {"machine": "a"})
        self.assertEqual(self.fake.log_lines(), ["BEGIN outer", "i", "w", "e", "a: m", "END"])

    def test_serial_stdout(self) -> None:
        self.g["serial_stdout_off"]()
        self.g["serial_stdout_on"]()
        self.assertEqual([r["args"] for r in self.fake.of("serial_stdout")], [{"on": False}, {"on": True}])

    def test_start_all_and_join_all(self) -> None:
        self.g["start_all"]()
        self.g["join_all"]()
        self.assertEqual([(r["op"], r["machine"]) for r in self.fake.requests if r["op"] != "log"], [
            ("log_begin", None), ("start", "a"), ("start", "b"), ("log_end", None), ("join_all", None)])
        self.assertEqual(self.fake.log_lines()[0], "BEGIN start all VMs")

    def test_create_machine(self) -> None:
        m = self.g["create_machine"]("/nix/store/x-run-extra-vm", name="extra")
        self.assertEqual(m.name, "extra")
        self.assertEqual(self.fake.of("create_machine")[0]["args"],
                         {"start_command": "/nix/store/x-run-extra-vm", "name": "extra",
                          "keep_machine_state": False})

    def test_vlan_ops(self) -> None:
        v, a, b = self.g["vlan1"], self.g["a"], self.g["b"]
        v.block(a)
        v.unblock("a")
        v.partition([a], [b])
        v.heal()
        v.loss(0.5)
        v.loss(1, b)
        v.delay(0.2, machine=a)
        v.delay(datetime.timedelta(milliseconds=50))
        v.stats()
        self.assertEqual([(r["machine"], r["args"]) for r in self.fake.of("vlan")], [
            (None, {"vlan": 1, "action": "block", "machine": "a"}),
            (None, {"vlan": 1, "action": "unblock", "machine": "a"}),
            (None, {"vlan": 1, "action": "partition", "groups": [["a"], ["b"]]}),
            (None, {"vlan": 1, "action": "heal"}),
            (None, {"vlan": 1, "action": "loss", "fraction": 0.5, "machine": None}),
            (None, {"vlan": 1, "action": "loss", "fraction": 1.0, "machine": "b"}),
            (None, {"vlan": 1, "action": "delay", "seconds": 0.2, "machine": "a"}),
            (None, {"vlan": 1, "action": "delay", "seconds": 0.05, "machine": None}),
            (None, {"vlan": 1, "action": "stats"}),
        ])

    def test_run_tests_syncs_machines_that_are_up(self) -> None:
        self.fake.handlers["is_up"] = lambda req: req["machine"] == "b"
        self.driver.tests = "x = 1\n"
        self.driver.run_tests()
        self.assertEqual(self.g["x"], 1)
        self.assertEqual([(r["machine"], r["args"]["command"]) for r in self.fake.of("execute")], [("b", "sync")])
        self.assertIn("BEGIN run the VM test script", self.fake.log_lines())


class PollingConditions(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeDriver()
        self.driver = make_driver(self.fake)
        self.pc = self.driver.polling_condition

    def tearDown(self) -> None:
        self.fake.close()

    def test_decorator_forms_and_attributes(self) -> None:
        @self.pc
        def plain():
            "the docstring"

        @self.pc(seconds_interval=10, description="custom")
        def with_args():
            pass

        def named():
            pass

        self.assertEqual(plain.description, "the docstring")
        self.assertEqual(plain.seconds_interval, 2.0)
        self.assertEqual(with_args.description, "custom")
        self.assertEqual(with_args.seconds_interval, 10)
        self.assertEqual(self.pc(named).description, "named")
        self.assertEqual(self.pc(named, seconds_interval=datetime.timedelta(minutes=1))
                         .seconds_interval, 60.0)

    def test_context_manager_stack(self) -> None:
        p1, p2 = self.pc(lambda: True), self.pc(lambda: True)
        with p1:
            with p2:
                self.assertEqual(self.driver.polling_conditions, [p1.condition, p2.condition])
            self.assertEqual(self.driver.polling_conditions, [p1.condition])
        self.assertEqual(self.driver.polling_conditions, [])

    def test_none_and_exceptions(self) -> None:
        self.assertTrue(self.pc(lambda: None).condition.check(force=True))

        def boom():
            raise RuntimeError("x")

        self.assertFalse(self.pc(boom).condition.check(force=True))
        self.assertIn("BEGIN Checking polling condition 'boom'", self.fake.log_lines())
        self.assertIn("Polling condition failed: boom", self.fake.log_lines())

    def test_wait(self) -> None:
        n = {"v": 0}

        def eventually():
            n["v"] += 1
            return n["v"] >= 2

        with mock.patch("nix_vmtest.machine.time.sleep"):
            self.pc(eventually, description="ready").wait(timeout=30)
        self.assertEqual(n["v"], 2)
        self.assertIn("BEGIN waiting for ready", self.fake.log_lines())
        self.assertIn("(ready failure not fatal yet)", self.fake.log_lines())
        with self.assertRaises(RequestedAssertionFailed):
            self.pc(lambda: False, description="never").wait(timeout=0)
        for kw in ({"timeout": datetime.timedelta(0)}, {"timeout_seconds": 0}):
            with self.subTest(kw=kw), self.assertRaises(RequestedAssertionFailed):
                self.pc(lambda: False, description="never").wait(**kw)


if __name__ == "__main__":
    unittest.main()
