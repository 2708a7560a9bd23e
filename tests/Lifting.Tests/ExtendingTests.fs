/// docs/extending.md's examples (compiled from the document into Lifting.Tests.Docs.Extending by
/// DocExamples.targets), each run through the conformance kit, and the method registered there run
/// by the host's commands.
module Lifting.Tests.ExtendingTests

open System
open System.IO
open Expecto
open Lifting
open Lifting.Formulations
open Lifting.Solvers
open Lifting.Tests.Docs.Extending

/// The document's method and solver are registered once per test process.
let registered =
    lazy (
        RegisterMethod.register ()
        EquationMethods.register ()
        HeavyBallSolver.register ())

[<Tests>]
let tests =
    testList "ExtendingTests" [
        test "extending.md: the softsign activation passes the kit's activation checks" {
            CheckActivation.check ()
        }
        test "extending.md: the affine layer passes the kit's layer checks" {
            CheckLayer.check ()
        }
        test "extending.md: the L1-penalty formulation passes the kit's formulation × solver checks" {
            let outcomes = CheckFormulation.check ()
            Expect.equal outcomes.Count 4 "one run per solver"
        }
        test "extending.md: the heavy-ball solver passes the kit's game checks and runs the built-in formulations" {
            let outcomes = CheckSolver.check ()
            Expect.equal outcomes.Count 2 "one run per formulation"
        }
        test "extending.md: the registered l1-penalty method is listed by `lifting methods` with --mu and trains through `lifting train`" {
            registered.Force()
            use listing = new StringWriter()
            Expect.equal (Lifting.Host.Cli.Run([| "methods" |], listing, listing)) 0 "lifting methods"
            Expect.stringContains (listing.ToString()) "l1-penalty" "the method is listed"
            use details = new StringWriter()
            Expect.equal (Lifting.Host.Cli.Run([| "methods"; "l1-penalty" |], details, details)) 0 "lifting methods l1-penalty"
            Expect.stringContains (details.ToString()) "--mu" "with its own parameter"
            Expect.stringContains (listing.ToString()) "heavy-ball" "the registered solver is listed"
            use output = new StringWriter()
            let code = RegisterMethod.train output
            Expect.equal code 0 $"lifting train exits 0: {output}"
            let last = output.ToString().TrimEnd().Split('\n') |> Array.last
            let summary = Text.Json.JsonDocument.Parse(last).RootElement
            Expect.isGreaterThan (summary.GetProperty("test_accuracy").GetDouble()) 0.5 $"two epochs on digits learn: {last}"
            let resolved = Methods.Resolve(MethodSettings("l1-penalty").With("mu", 2.0).With("solver", "heavy-ball"))
            Expect.stringContains resolved.Solver.Name "heavy-ball" "a registered solver is accepted by a registered method's --solver"
        }
        test "extending.md: the equation-built L1 penalty, capped augmented Lagrangian and ε-insensitive predictive coding pass the kit, are listed with their equations and train through `lifting train`" {
            let outcomes = CheckEquations.check ()
            Expect.equal outcomes.Count 9 "one run per formulation and solver"
            registered.Force()
            use details = new StringWriter()
            Expect.equal (Lifting.Host.Cli.Run([| "methods"; "auglag-capped" |], details, details)) 0 "lifting methods auglag-capped"
            Expect.stringContains (details.ToString()) "--cap" "with its own parameters"
            Expect.stringContains (details.ToString()) "L = ℓ + Σ_v (⟨clip(λ_v, 1), g_v⟩ + 0.5·‖g_v‖²)" "and its equation"
            for name in [ "l1-equation"; "auglag-capped"; "pc-insensitive" ] do
                use output = new StringWriter()
                let code = Lifting.Host.Cli.Run([| "train"; "--method"; name; "--epochs"; "2"; "--json" |], output, output)
                Expect.equal code 0 $"lifting train --method {name} exits 0: {output}"
                let last = output.ToString().TrimEnd().Split('\n') |> Array.last
                let summary = Text.Json.JsonDocument.Parse(last).RootElement
                Expect.isGreaterThan (summary.GetProperty("test_accuracy").GetDouble()) 0.5 $"{name}: two epochs on digits learn: {last}"
        }
        test "a registered step rule is accepted by every method's optimizer parameters; unknown names are refused naming the bad value" {
            StepRuleCatalog.Register(StepRuleDefinition("sign-sgd", "d = α sign(g) (tests)", (fun lr ->
                { new IStepRule with
                    member _.Name = $"sign-sgd(lr={lr})"
                    member _.Init(_, _) = StepState.Empty
                    member _.Displacement(g, _) = g.sign() * lr }), 1e-3))
            let m = Methods.Resolve(MethodSettings("extraprop").With("optimizer-states", "SIGN-SGD"))
            Expect.stringContains (m.StepRules.Invoke(PlayerNames.States).Name) "sign-sgd(lr=0.001)" "the rule with its own default step size"
            let optimizer = match (Methods.Find "backprop").Parameter("optimizer") with null -> failtest "backprop has no optimizer" | p -> p
            Expect.contains optimizer.Choices "sign-sgd" "listed among the choices"
            let ex = Expect.throwsC (fun () -> Methods.Resolve(MethodSettings("backprop").With("optimizer", "newton")) |> ignore) id
            Expect.stringContains ex.Message "newton" "names the bad value"
            Expect.throwsT<ArgumentException> (fun () -> StepRuleCatalog.Register(StepRuleDefinition("adam", "again", (fun lr -> StepRules.Adam lr), 1e-3))) "a taken name is refused"
            Expect.throwsT<ArgumentException> (fun () -> SolverCatalog.Register(SolverDefinition("EG", "again", fun _ -> Solvers.Extragradient()))) "a taken alias is refused, whatever its case"
        }
    ]
