"""Rows in real datasets' schemas, for the data tests: GSM8K (worked solutions ending in
``#### N``), MATH (solutions with ``\\boxed{}``, level, type), verl's RL parquet schema."""

GSM8K = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
        "<<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {
        "question": "A shop sells 1,000 pens and then 234 more. How many pens did it sell?",
        "answer": "It sold 1,000 + 234 = <<1000+234=1234>>1,234 pens.\n#### 1,234",
    },
]
MATH = [
    {
        "problem": "What is $\\frac{2}{4}$ in lowest terms?",
        "solution": "Divide both by 2: $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$.",
        "level": "Level 1",
        "type": "Prealgebra",
    },
    {
        "problem": "Solve $x + 3 = 5$.",
        "solution": "Subtract 3, so $x = \\boxed{2}$. (We put answers in $\\boxed{}$.)",
        "level": "Level 2",
        "type": "Algebra",
    },
]
VERL = [
    {
        "data_source": "openai/gsm8k",
        "prompt": [
            {"role": "system", "content": "Reason step by step."},
            {"role": "user", "content": f"What is {i} + {i}? Let's think step by step."},
        ],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
        "extra_info": {"split": "train", "index": i},
    }
    for i in range(20)
]
