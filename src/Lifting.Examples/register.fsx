// A method of one's own, registered by name with its defaults, then run by the `lifting`
// commands in this process (the host library, Lifting.Host.Cli.Run): listed by `lifting methods`,
// trained by `lifting train`, benchmarked by `lifting bench`, with its parameters as flags.
//
//     dotnet build src/Lifting.Examples -c Release
//     dotnet fsi src/Lifting.Examples/register.fsx
#load "References.fsx"

open Lifting
open Lifting.Formulations
open Lifting.FSharp

// The quadratic penalty (MAC) with a fixed μ, solved by extragradient on weights and states.
Method.define
    { Name = "penalty-eg"
      Description = "fixed quadratic penalty μ, extragradient on weights and states (a script's own method)"
      Solver = "extragradient"
      Players = [ { Player = "weights"; StepRule = "adam"; StepSize = 1e-3 }
                  { Player = "states"; StepRule = "constant"; StepSize = 0.05 } ]
      Parameters = [ MethodParameter.Positive("mu", 10.0, "penalty weight μ") ]
      Formulation = fun a -> QuadraticPenalty(PenaltySchedule.Fixed(a.Real "mu")) }
|> Method.register

let lifting (args: string list) =
    let code = Lifting.Host.Cli.Run(Array.ofList args, stdout, stderr)
    if code <> 0 then failwithf "lifting %s exited with %d" (String.concat " " args) code

for p in Method.parameters "penalty-eg" do printfn "  --%-18s %-10s %s" p.Name p.Default p.Description
lifting [ "train"; "--method"; "penalty-eg"; "--mu"; "20"; "--epochs"; "3" ]
lifting [ "bench"; "--methods"; "backprop,penalty-eg"; "--data"; "digits"; "--net"; "64-64-10"; "--epochs"; "2"; "--repeats"; "1" ]
