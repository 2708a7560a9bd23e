module Lifting.Tests.FormulationTests

open Expecto

[<Tests>]
let tests = testList "FormulationTests" []
