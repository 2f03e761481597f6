"""A judge prompt and how its score is read.

python examples/judge.py
"""

from self_rewarding_lm_pytorch import RewardConfig

config = RewardConfig(
    prompt_template="""
    Pretty please rate the following user prompt and response
    User: {{ prompt }}
    Response: {{ response }}
    Format your score as follows:
    Rating: <rating as integer from 0 - 10>
    """,
    reward_regex_template="""
    Rating: {{ reward }}
    """,
    score_range=(0, 10),
)
text = config.render(prompt="What is 2+2?", response="4")
print(config.parse("Good answer. Rating: 9"), config.parse("I cannot tell"))  # 9.0 None
