module Lifting.Tests.SolverTests

open Expecto

[<Tests>]
let tests = testList "SolverTests" []
