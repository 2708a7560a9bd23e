namespace Lifting.FSharp

open Lifting
open Lifting.Formulations
open Lifting.Solvers

/// Which method to train with and the parameters changed from its defaults (invariant text, as on
/// the command line). An F# record: copy and update it, or pipe it through `Method.set`.
type MethodSpec = { Name: string; Values: Map<string, string> }

/// A player's default step rule and step size in a method of one's own.
type PlayerSpec = { Player: string; StepRule: string; StepSize: float }

/// A method of one's own for a formulation, with the parameters every method shares (`solver`,
/// `optimizer[-player]`, `lr[-player]`, `schedule`) and its own `Parameters`.
type FormulationMethod =
    { Name: string
      Description: string
      Solver: string
      Players: PlayerSpec list
      Parameters: MethodParameter list
      Formulation: MethodArguments -> IFormulation }

/// Methods by name (the catalog `lifting methods` lists), and registering one's own.
[<RequireQualifiedAccess>]
module Method =
    /// A method with its defaults.
    let named (name: string) : MethodSpec = { Name = name; Values = Map.empty }
    /// Sets one parameter (numbers and booleans are formatted invariantly).
    let set (parameter: string) (value: obj) (spec: MethodSpec) =
        { spec with Values = spec.Values.Add(parameter, MethodParameter.Format value) }
    /// The settings the C# API takes.
    let settings (spec: MethodSpec) =
        MethodSettings(spec.Name, Values = (spec.Values |> Map.toSeq |> dict |> System.Collections.Generic.Dictionary))
    /// Checks the values, fills in the defaults and builds the method (fresh step rules each time).
    let resolve (spec: MethodSpec) = Methods.Resolve(settings spec)
    /// The method's parameters with their defaults.
    let parameters (name: string) = List.ofSeq (Methods.Find name).Parameters
    /// Every registered method's name.
    let names () = [ for m in Methods.All -> m.Name ]

    /// A catalog definition for a formulation method.
    let define (m: FormulationMethod) =
        Methods.ForFormulation(m.Name, m.Description, m.Solver,
            [ for p in m.Players -> PlayerDefault(p.Player, p.StepRule, p.StepSize) ], m.Parameters,
            System.Func<_, _>(m.Formulation))
    /// Registers a method definition: it is then listed, resolved by name and runnable from the host.
    let register (definition: MethodDefinition) = Methods.Register definition

/// Registering solvers by name.
[<RequireQualifiedAccess>]
module Solver =
    /// Registers a solver made from the formulation's default schedule of sub-problems.
    let register (name: string) (description: string) (make: SubProblem list -> ISolver) =
        SolverCatalog.Register(SolverDefinition(name, description, System.Func<_, _>(fun schedule -> make (List.ofSeq schedule))))
    let names () = [ for s in SolverCatalog.All -> s.Name ]

/// Registering step rules by name.
[<RequireQualifiedAccess>]
module StepRule =
    /// Registers a step rule made from its step size, with the step size it defaults to.
    let register (name: string) (description: string) (defaultRate: float) (make: float -> IStepRule) =
        StepRuleCatalog.Register(StepRuleDefinition(name, description, System.Func<_, _>(make), defaultRate))
    let names () = List.ofSeq StepRuleCatalog.Names
